from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.alert_receivers import HttpReceiver, SmtpServer, http_receiver, smtp_server

SLACK_PATH = "/services/T0000/B0000/slack-token-in-the-path"
SMTP_PASSWORD = "smtp-password-never-shown"
UI_URL = "http://dagster.acme.test:3000"


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with http_receiver() as r:
        yield r


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with smtp_server("alerts", SMTP_PASSWORD) as s:
        yield s


@pytest.fixture
def alert_env(receiver: HttpReceiver, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Every alert channel configured through the platform's variables, pointing at the loopback receivers."""
    env = {
        "MEDALLION_ALERT_WEBHOOK_URL": f"{receiver.base_url}/hooks/generic",
        "MEDALLION_ALERT_SLACK_WEBHOOK_URL": f"{receiver.base_url}{SLACK_PATH}",
        "MEDALLION_ALERT_SMTP_HOST": smtp.host,
        "MEDALLION_ALERT_SMTP_PORT": str(smtp.port),
        "MEDALLION_ALERT_SMTP_USER": "alerts",
        "MEDALLION_ALERT_SMTP_PASSWORD": SMTP_PASSWORD,
        "MEDALLION_ALERT_SMTP_STARTTLS": "false",
        "MEDALLION_ALERT_EMAIL_FROM": "medallion@acme.test",
        "MEDALLION_ALERT_EMAIL_TO": "oncall@acme.test",
        "MEDALLION_DAGSTER_UI_URL": UI_URL,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
