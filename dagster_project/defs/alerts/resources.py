from __future__ import annotations

import dagster as dg
from pydantic import Field

from dagster_project import settings
from dagster_project.defs.common.resources import by_reference_if_configured
from dagster_project.lib.clients.alerts import Alert, AlertChannels, Delivery, EmailChannel


class AlertsResource(dg.ConfigurableResource):
    """Where alerts go: a generic webhook (JSON POST), a Slack incoming webhook, e-mail over SMTP.

    Webhook URLs and the SMTP password are given as dg.EnvVar, so the UI shows the variables' names only."""

    webhook_url: str = Field(default="", description="Generic webhook (MEDALLION_ALERT_WEBHOOK_URL); empty: off.")
    slack_webhook_url: str = Field(
        default="", description="Slack incoming webhook (MEDALLION_ALERT_SLACK_WEBHOOK_URL); empty: off."
    )
    smtp_host: str = Field(default="", description="SMTP server; empty: no e-mail.")
    smtp_port: int = Field(default=587)
    smtp_username: str = Field(default="", description="Empty: send without logging in.")
    smtp_password: str = Field(default="", description="Given as dg.EnvVar (MEDALLION_ALERT_SMTP_PASSWORD).")
    smtp_starttls: bool = Field(default=True)
    email_from: str = Field(default="medallion@localhost")
    email_to: list[str] = Field(default_factory=list)
    ui_url: str = Field(default="http://127.0.0.1:3000", description="The Dagster UI as people reach it, for links.")
    timeout: float = Field(default=10.0, description="Seconds one delivery may take.")

    @property
    def channels(self) -> list[str]:
        return self._channels().names

    def _channels(self) -> AlertChannels:
        email = (
            EmailChannel(
                host=self.smtp_host,
                port=self.smtp_port,
                sender=self.email_from,
                recipients=tuple(self.email_to),
                username=self.smtp_username,
                password=self.smtp_password,
                starttls=self.smtp_starttls,
            )
            if self.smtp_host and self.email_to
            else None
        )
        return AlertChannels(
            webhook_url=self.webhook_url or None,
            slack_webhook_url=self.slack_webhook_url or None,
            email=email,
            timeout=self.timeout,
        )

    def send(self, alert: Alert) -> Delivery:
        """Deliver to every configured channel; raises AlertDeliveryError when none took it."""
        return self._channels().send(alert)

    def link(self, path: str) -> str:
        return f"{self.ui_url.rstrip('/')}/{path.lstrip('/')}"


def alerts_from_settings() -> AlertsResource:
    email = settings.alert_email()
    return AlertsResource(
        webhook_url=by_reference_if_configured(settings.ALERT_WEBHOOK_URL, ""),
        slack_webhook_url=by_reference_if_configured(settings.ALERT_SLACK_WEBHOOK_URL, ""),
        smtp_host=email.host if email else "",
        smtp_port=email.port if email else 587,
        smtp_username=email.username if email else "",
        smtp_password=by_reference_if_configured(settings.ALERT_SMTP_PASSWORD, ""),
        smtp_starttls=email.starttls if email else True,
        email_from=email.sender if email else "medallion@localhost",
        email_to=list(email.recipients) if email else [],
        ui_url=settings.dagster_ui_url(),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(resources={"alerts": alerts_from_settings()})
