"""Send an alert to the channels an operator configured: a generic webhook (JSON POST), a Slack incoming
webhook, e-mail over SMTP.

Every channel gets every alert. Webhook URLs carry tokens (Slack's always does) and the SMTP password is
a secret, so neither ever appears in an error, a log line or a message: a failed delivery names the
channel, the host and what went wrong. Text that comes from elsewhere (a run's error) passes through
`redact()` before it is sent.
"""

from __future__ import annotations

import json
import re
import smtplib
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Literal
from urllib.parse import urlsplit

AlertKind = Literal["run_failure", "check_failure", "freshness_overdue", "freshness_recovered"]

# user:password@ in any URL, and the usual secret-bearing query parameters.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]+):[^@\s]+@")
_SECRET_QUERY = re.compile(r"(?i)(?P<name>[?&](?:token|key|secret|password|sig|signature|access_token)=)[^&\s]+")
MAX_DETAIL_CHARS = 500


def redact(text: str) -> str:
    """Text with the passwords of URLs and secret query parameters masked."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m['name']}***", text)


@dataclass(frozen=True)
class Alert:
    """What happened, in a form every channel can render: one title line, detail lines, the facts an
    on-call engineer filters on (run id, asset, partition, owners), and a link to the Dagster UI."""

    kind: AlertKind
    title: str
    details: tuple[str, ...] = ()
    facts: Mapping[str, str] = field(default_factory=dict)
    url: str | None = None
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def as_json(self) -> dict[str, Any]:
        return {
            "source": "medallion",
            "kind": self.kind,
            "title": self.title,
            "details": list(self.details),
            "facts": dict(self.facts),
            "url": self.url,
            "occurred_at": self.occurred_at.isoformat(),
        }

    def as_text(self) -> str:
        lines = [self.title, *self.details, ""]
        lines += [f"{name}: {value}" for name, value in self.facts.items()]
        if self.url:
            lines += ["", self.url]
        return "\n".join(lines).strip() + "\n"

    def as_slack(self) -> dict[str, Any]:
        """Slack's incoming-webhook message: mrkdwn text (with `&`, `<` and `>` escaped as Slack requires)."""

        def esc(value: str) -> str:
            return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

        lines = [f"*{esc(self.title)}*", *(esc(d) for d in self.details)]
        if self.facts:
            lines.append(" · ".join(f"{esc(k)}: `{esc(v)}`" for k, v in self.facts.items()))
        if self.url:
            lines.append(f"<{self.url}|Open in Dagster>")
        return {"text": "\n".join(lines)}


def detail(text: str) -> str:
    """A line of foreign text (an error message) fit for an alert: redacted, first line only, bounded."""
    first = redact(text).strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= MAX_DETAIL_CHARS else first[: MAX_DETAIL_CHARS - 1] + "…"


@dataclass(frozen=True)
class EmailChannel:
    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    username: str = ""
    password: str = field(default="", repr=False)
    starttls: bool = True


class AlertDeliveryError(Exception):
    """No configured channel took the alert; the message names each channel, its host and the reason."""


@dataclass(frozen=True)
class Delivery:
    delivered: tuple[str, ...]
    failed: Mapping[str, str]  # channel -> reason (no URL path, no secret)


@dataclass(frozen=True)
class AlertChannels:
    """The configured channels; an unset one is None."""

    webhook_url: str | None = field(default=None, repr=False)
    slack_webhook_url: str | None = field(default=None, repr=False)
    email: EmailChannel | None = None
    timeout: float = 10.0

    @property
    def names(self) -> list[str]:
        named = (("webhook", self.webhook_url), ("slack", self.slack_webhook_url), ("email", self.email))
        return [name for name, value in named if value]

    def send(self, alert: Alert) -> Delivery:
        """Deliver to every channel; one channel failing does not keep the alert from the others.
        Raises AlertDeliveryError when channels are configured and none took it."""
        delivered: list[str] = []
        failed: dict[str, str] = {}
        attempts: Sequence[tuple[str, Any]] = [
            ("webhook", lambda: self._post("webhook", self.webhook_url, alert.as_json())),
            ("slack", lambda: self._post("slack", self.slack_webhook_url, alert.as_slack())),
            ("email", lambda: self._mail(alert)),
        ]
        for name, attempt in attempts:
            if name not in self.names:
                continue
            try:
                attempt()
                delivered.append(name)
            except _ChannelError as exc:
                failed[name] = str(exc)
        if failed and not delivered:
            raise AlertDeliveryError("; ".join(f"{name}: {reason}" for name, reason in failed.items()))
        return Delivery(tuple(delivered), failed)

    def _post(self, channel: str, url: str | None, payload: dict[str, Any]) -> None:
        # urllib rather than httpx: httpx logs every request's full URL at INFO, and these URLs hold tokens.
        host = urlsplit(url or "").netloc.rsplit("@", 1)[-1] or "?"
        request = urllib.request.Request(
            url or "",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", "User-Agent": "medallion-alerts"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _ChannelError(f"{type(reason).__name__} posting to {host}") from None
        if status >= 300:
            raise _ChannelError(f"HTTP {status} from {host}")

    def _mail(self, alert: Alert) -> None:
        email = self.email
        assert email is not None
        message = EmailMessage()
        message["Subject"] = f"[medallion] {alert.title}"
        message["From"] = email.sender
        message["To"] = ", ".join(email.recipients)
        message.set_content(alert.as_text())
        try:
            with smtplib.SMTP(email.host, email.port, timeout=self.timeout) as smtp:
                if email.starttls:
                    smtp.starttls()
                if email.username:
                    smtp.login(email.username, email.password)
                refused = smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            # SMTP replies can echo what was sent (never the password, but keep to the reply code).
            code = getattr(exc, "smtp_code", None)
            reason = f"SMTP {code}" if code else type(exc).__name__
            raise _ChannelError(f"{reason} from {email.host}:{email.port}") from None
        if refused:
            raise _ChannelError(f"{len(refused)} recipient(s) refused by {email.host}:{email.port}")


class _ChannelError(Exception):
    pass
