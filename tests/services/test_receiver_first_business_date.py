"""The receiver files events by the same first business date as the partitions (MEDALLION_FIRST_BUSINESS_DATE)."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import httpx
import pytest

from dagster_project import settings
from dagster_project.lib.intake.inbox import Inbox
from dagster_project.lib.intake.signatures import sign_stripe
from dagster_project.services.loopback import serve_in_thread
from dagster_project.services.webhook_receiver import create_app_from_settings


def test_an_event_created_before_the_configured_first_business_date_is_filed_under_the_day_it_arrived(
    platform_env: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MEDALLION_WEBHOOK_SECRETS_STRIPE", "whsec_test_first_date")
    today = dt.datetime.now(dt.UTC).date()
    monkeypatch.setenv(settings.FIRST_BUSINESS_DATE, (today - dt.timedelta(days=10)).isoformat())
    created = {"evt_old": today - dt.timedelta(days=11), "evt_in": today - dt.timedelta(days=10)}
    with serve_in_thread(create_app_from_settings(), name="webhook receiver") as url:
        for event_id, day in created.items():
            body = json.dumps(
                {
                    "id": event_id,
                    "type": "charge.succeeded",
                    "created": int(dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC).timestamp()),
                    "data": {"object": {"id": "ch_1", "object": "charge"}},
                }
            ).encode()
            headers = {"Stripe-Signature": sign_stripe(body, "whsec_test_first_date", int(time.time()))}
            assert httpx.post(f"{url}/webhooks/stripe", content=body, headers=headers).status_code == 200
    with Inbox(settings.webhook_inbox_url()) as inbox:
        stored = {e.event_id: e for e in inbox.read_since(0)}
    assert stored["evt_in"].event_date == created["evt_in"] and not stored["evt_in"].redated
    # a day before the first partition: filed under the day it arrived (it was received just now)
    assert stored["evt_old"].event_date == stored["evt_old"].received_at.date() and stored["evt_old"].redated
