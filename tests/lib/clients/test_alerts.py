"""The alert channels against real receivers on loopback: a webhook and Slack over HTTP, e-mail over SMTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dagster_project.lib.clients.alerts import Alert, AlertChannels, AlertDeliveryError, EmailChannel, detail, redact
from tests.fakes.alert_receivers import HttpReceiver, SmtpServer, http_receiver, smtp_server

TOKEN = "T0000/B0000/xoxb-secret-token-1234"
PASSWORD = "smtp-secret-pw-5678"

ALERT = Alert(
    kind="run_failure",
    title="Run failed: customers_intake [2026-11-29]",
    details=("step landing__customers: ValueError: <bad> & worse",),
    facts={"job": "customers_intake", "run_id": "abc123"},
    url="http://127.0.0.1:3000/runs/abc123",
)


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with http_receiver() as r:
        yield r


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with smtp_server("alerts", PASSWORD) as s:
        yield s


def _email(smtp: SmtpServer, password: str = PASSWORD) -> EmailChannel:
    return EmailChannel(
        host=smtp.host,
        port=smtp.port,
        sender="medallion@acme.test",
        recipients=("oncall@acme.test", "data@acme.test"),
        username="alerts",
        password=password,
        starttls=False,
    )


def test_every_configured_channel_gets_the_alert(receiver: HttpReceiver, smtp: SmtpServer):
    channels = AlertChannels(
        webhook_url=f"{receiver.base_url}/hooks/generic",
        slack_webhook_url=f"{receiver.base_url}/services/{TOKEN}",
        email=_email(smtp),
    )
    delivery = channels.send(ALERT)

    assert delivery.delivered == ("webhook", "slack", "email") and not delivery.failed
    [generic] = receiver.on("/hooks/generic")
    assert generic["source"] == "medallion" and generic["kind"] == "run_failure"
    assert generic["title"] == ALERT.title and generic["facts"]["run_id"] == "abc123"
    assert generic["url"] == ALERT.url
    [slack] = receiver.on(f"/services/{TOKEN}")
    # Slack's mrkdwn: control characters escaped, the link in Slack's <url|text> form.
    assert "ValueError: &lt;bad&gt; &amp; worse" in slack["text"]
    assert "<http://127.0.0.1:3000/runs/abc123|Open in Dagster>" in slack["text"]
    [message] = smtp.messages
    assert message["Subject"] == f"[medallion] {ALERT.title}"
    assert smtp.envelopes == [("medallion@acme.test", ["oncall@acme.test", "data@acme.test"])]
    assert smtp.logins == ["alerts"]
    assert "run_id: abc123" in message.get_payload() and ALERT.url in message.get_payload()


def test_a_failed_channel_is_named_without_its_url_and_the_others_still_get_the_alert(
    receiver: HttpReceiver, smtp: SmtpServer
):
    receiver.status_by_path[f"/services/{TOKEN}"] = 404
    channels = AlertChannels(
        webhook_url=f"{receiver.base_url}/hooks/generic",
        slack_webhook_url=f"{receiver.base_url}/services/{TOKEN}",
        email=_email(smtp, password="wrong-password"),
    )
    delivery = channels.send(ALERT)

    assert delivery.delivered == ("webhook",)
    assert set(delivery.failed) == {"slack", "email"}
    assert delivery.failed["slack"] == f"HTTP 404 from {receiver.base_url.removeprefix('http://')}"
    assert delivery.failed["email"] == f"SMTP 535 from {smtp.host}:{smtp.port}"
    assert not any(secret in reason for reason in delivery.failed.values() for secret in (TOKEN, "wrong-password"))


def test_no_channel_taking_the_alert_raises_without_secrets(receiver: HttpReceiver):
    receiver.status_by_path[f"/services/{TOKEN}"] = 500
    closed_port_url = f"http://127.0.0.1:9/hooks/{TOKEN}"  # discard port: nothing listens
    channels = AlertChannels(webhook_url=closed_port_url, slack_webhook_url=f"{receiver.base_url}/services/{TOKEN}")
    with pytest.raises(AlertDeliveryError) as error:
        channels.send(ALERT)
    assert "webhook: ConnectionRefusedError posting to 127.0.0.1:9" in str(error.value)
    assert "slack: HTTP 500 from" in str(error.value)
    assert TOKEN not in str(error.value)


def test_no_channel_configured_sends_nothing():
    channels = AlertChannels()
    assert channels.names == []
    assert channels.send(ALERT).delivered == ()


def test_foreign_text_is_redacted_and_kept_to_one_bounded_line():
    assert redact("could not connect to postgresql://etl:hunter2@db:5432/x") == (
        "could not connect to postgresql://etl:***@db:5432/x"
    )
    assert (
        redact("GET https://api.test/v1?access_token=abc123&page=2")
        == "GET https://api.test/v1?access_token=***&page=2"
    )
    assert detail("first line\nsecond line with a traceback") == "first line"
    assert len(detail("x" * 5000)) == 500
    assert repr(AlertChannels(webhook_url=f"http://h/{TOKEN}")).count(TOKEN) == 0
    assert PASSWORD not in repr(EmailChannel("h", 25, "a@b", ("c@d",), "u", PASSWORD))
