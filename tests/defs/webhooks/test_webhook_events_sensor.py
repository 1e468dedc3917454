"""The webhook sensor against a real inbox (and the real receiver over HTTP): one run per touched source and date,
never the same twice, every stored event on a partition the daemon accepts, and conflicts shown in Dagster."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest

from dagster_project import settings
from dagster_project.defs.common.partitions import daily_partitions
from dagster_project.defs.webhooks.resources import InboxResource
from dagster_project.defs.webhooks.sensors import webhook_events_sensor
from dagster_project.lib.intake.inbox import InboundEvent, Inbox, Position, migrate, webhook_events
from dagster_project.lib.intake.signatures import sign_standard, sign_stripe

from .conftest import SHOP_SECRET, STRIPE_SECRET, Platform

DAYS = [dt.date(2025, 11, 3), dt.date(2025, 11, 4), dt.date(2025, 11, 5)]


def _tick(cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(
        cursor=cursor, resources={"inbox": InboxResource(url=settings.webhook_inbox_url())}
    )
    return webhook_events_sensor(context)


def _tick_as_the_daemon(platform: Platform) -> list[dg.RunRequest]:
    """A tick evaluated the way the code server evaluates it for the daemon (`evaluate_tick`): run requests are
    resolved against their job, so a partition key the job does not have fails the tick, as it does there."""
    name = "webhook_events_sensor"
    context = dg.build_sensor_context(
        instance=platform.instance,
        cursor=platform.cursors.get(name),
        definitions=platform.defs,
        resources={"inbox": InboxResource(url=settings.webhook_inbox_url())},
    )
    data = platform.defs.resolve_sensor_def(name).evaluate_tick(context)
    platform.cursors[name] = data.cursor
    requests = list(data.run_requests or [])
    assert all(daily_partitions.has_partition_key(r.partition_key) for r in requests)
    return requests


def test_sensor_requests_one_run_per_touched_date_and_never_the_same_twice(inbox_url: str):
    not_yet = _tick(None)  # the receiver has not created the inbox yet: skip, keep the cursor
    assert not not_yet.run_requests and "inbox unavailable" in not_yet.skip_reason.skip_message

    migrate(inbox_url)

    def store(event_id: str, day: int, provider: str = "stripe") -> None:
        created = dt.datetime.combine(DAYS[day], dt.time(12), tzinfo=dt.UTC)
        with Inbox(inbox_url) as inbox:
            inbox.store(InboundEvent(provider, event_id, "charge.succeeded", created, b"{}"))

    store("evt_1", 0)
    store("evt_2", 1)
    store("evt_3", 0)
    store("msg_1", 2, provider="shop")  # the shop's events are another source, with its own job
    store("x_1", 2, provider="unknown")  # a provider that is no source (stored by hand): reported, not requested
    first = _tick(None)
    assert [(r.job_name, r.partition_key, r.run_key) for r in first.run_requests] == [
        ("payment_events_ingest", "2025-11-03", "payment_events:2025-11-03:3"),
        ("payment_events_ingest", "2025-11-04", "payment_events:2025-11-04:2"),
        ("shop_events_ingest", "2025-11-05", "shop_events:2025-11-05:4"),
    ]
    assert json.loads(first.cursor) == {"events": "0:5", "conflicts": "0:0"}

    assert _tick(first.cursor).run_requests == []
    store("evt_4", 1)
    later = _tick(first.cursor)
    assert [(r.partition_key, r.run_key) for r in later.run_requests] == [("2025-11-04", "payment_events:2025-11-04:6")]

    # a cursor kept by the previous version of the sensor (the last inbox id) goes on from where it was
    assert [r.run_key for r in _tick("5").run_requests] == ["payment_events:2025-11-04:6"]


def _post_stripe(base_url: str, event: dict) -> httpx.Response:
    body = json.dumps(event).encode()
    headers = {
        "Stripe-Signature": sign_stripe(body, STRIPE_SECRET, int(time.time())),
        "Content-Type": "application/json",
    }
    return httpx.post(f"{base_url}/webhooks/stripe", content=body, headers=headers, timeout=10)


def _charge(event_id: str, created: int, amount: int = 2500) -> dict:
    charge = {"id": f"ch_{event_id}", "object": "charge", "amount": amount, "currency": "eur", "status": "succeeded"}
    return {
        "id": event_id,
        "object": "event",
        "type": "charge.succeeded",
        "created": created,
        "data": {"object": charge},
    }


@pytest.mark.slow
def test_events_dated_outside_the_partitions_reach_bronze_under_the_day_they_were_received(
    parsed_manifest: Path, platform_env: Path, inbox_url: str, receiver: str
):
    platform = Platform(platform_env / "lake", platform_env / "sftp")
    old = int(dt.datetime(2024, 6, 1, tzinfo=dt.UTC).timestamp())  # before the first partition
    future = int(dt.datetime(2999, 1, 1, tzinfo=dt.UTC).timestamp())  # long after today
    assert _post_stripe(receiver, _charge("evt_old", old)).status_code == 200
    assert _post_stripe(receiver, _charge("evt_future", future)).status_code == 200
    body = b'{"type":"order.created","timestamp":"9999-12-31T23:59:59+00:00","data":{"id":"ord_1"}}'
    headers = sign_standard(body, SHOP_SECRET, "msg_far", int(time.time()))
    assert httpx.post(f"{receiver}/webhooks/shop", content=body, headers=headers, timeout=10).status_code == 200

    requests = _tick_as_the_daemon(platform)
    with Inbox(inbox_url) as inbox:
        received_on = {e.event_id: e.received_at.date().isoformat() for e in inbox.read_since(0)}
    assert sorted((r.job_name, r.partition_key) for r in requests) == sorted(
        {("payment_events_ingest", received_on["evt_old"]), ("shop_events_ingest", received_on["msg_far"])}
    )
    assert all(platform.run(r).success for r in requests)
    payments = {r["event_id"]: r for r in platform.table("bronze", "payment_events")}
    assert set(payments) == {"evt_old", "evt_future"}
    assert payments["evt_old"]["event_created_at"] == dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    assert payments["evt_future"]["event_created_at"] == dt.datetime(2999, 1, 1, tzinfo=dt.UTC)
    assert [r["event_id"] for r in platform.table("bronze", "shop_events")] == ["msg_far"]


@pytest.mark.slow
def test_a_same_id_different_body_conflict_fails_the_partitions_conflicts_check(
    parsed_manifest: Path, platform_env: Path, inbox_url: str, receiver: str
):
    platform = Platform(platform_env / "lake", platform_env / "sftp")
    created = int(dt.datetime(2025, 11, 5, 9, tzinfo=dt.UTC).timestamp())
    assert _post_stripe(receiver, _charge("evt_1", created)).json()["status"] == "stored"
    [first] = _tick_as_the_daemon(platform)
    run = platform.run(first)
    checks = {c.check_name: c for c in run.get_asset_check_evaluations()}
    assert checks["inbox_conflicts"].passed

    # the same event id again, with another amount: acknowledged, the first body kept, and shown in Dagster
    assert _post_stripe(receiver, _charge("evt_1", created, amount=9999)).json()["status"] == "conflict"
    [again] = _tick_as_the_daemon(platform)
    assert (again.partition_key, again.run_key) == ("2025-11-05", "payment_events:2025-11-05:conflict:1")
    run = platform.run(again)
    [conflicts] = [c for c in run.get_asset_check_evaluations() if c.check_name == "inbox_conflicts"]
    assert not conflicts.passed and conflicts.severity == dg.AssetCheckSeverity.WARN
    assert conflicts.metadata["conflicts"].value == 1
    assert conflicts.metadata["event_ids"].value == ["evt_1"]
    assert [r["amount_minor"] for r in platform.table("bronze", "payment_events")] == [2500]
    assert _tick_as_the_daemon(platform) == []


@pytest.mark.slow
def test_rows_whose_date_has_no_partition_never_fail_a_tick(parsed_manifest: Path, platform_env: Path, inbox_url: str):
    platform = Platform(platform_env / "lake", platform_env / "sftp")
    migrate(inbox_url)
    today = dt.datetime.now(dt.UTC)
    with Inbox(inbox_url) as inbox:
        inbox.store(InboundEvent("stripe", "evt_before", "charge.succeeded", today, b"{}"))
        # rows as an inbox filed them before every event had a partition, and one the receiver dated by a clock
        # a day ahead of this one: written directly, since the inbox no longer writes them
        with inbox.engine.begin() as conn:
            for event_id, event_date, received in [
                ("evt_legacy", dt.date(2024, 6, 1), today),
                ("evt_ahead", (today + dt.timedelta(days=1)).date(), today + dt.timedelta(days=1)),
            ]:
                conn.execute(
                    webhook_events.insert().values(
                        provider="stripe",
                        event_id=event_id,
                        event_type="charge.succeeded",
                        event_created_at=received,
                        event_date=event_date,
                        body=b"{}",
                        body_sha256="0" * 64,
                        headers={},
                        received_at=received,
                    )
                )
    requests = _tick_as_the_daemon(platform)  # raises, as the daemon's tick would, if any key is unknown
    assert [r.partition_key for r in requests] == [today.date().isoformat()]
    # the row dated ahead is read again on later ticks, until its day exists here: the cursor stays before it
    position = json.loads(platform.cursors["webhook_events_sensor"])["events"]
    with Inbox(inbox_url) as inbox:
        assert [e.event_id for e in inbox.read_page(Position.parse(position))[0]] == ["evt_ahead"]
    assert _tick_as_the_daemon(platform) == []
