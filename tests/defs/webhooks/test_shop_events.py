"""The shop's Standard Webhooks events end to end: signed POSTs over HTTP -> receiver -> inbox -> sensor -> bronze
-> dbt silver, on a real receiver, Dagster instance and dbt. A provider the receiver acknowledges is ingested."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest

from dagster_project import settings
from dagster_project.lib.intake.signatures import sign_standard

from .conftest import SHOP_SECRET, Platform

DAY = dt.date(2025, 11, 5)


def _post(base_url: str, message_id: str, payload: dict) -> int:
    body = json.dumps(payload).encode()
    headers = {"content-type": "application/json", **sign_standard(body, SHOP_SECRET, message_id, int(time.time()))}
    return httpx.post(f"{base_url}/webhooks/shop", content=body, headers=headers, timeout=10).status_code


@pytest.mark.slow
def test_signed_shop_events_reach_bronze_and_silver(
    parsed_manifest: Path, inbox_url: str, platform_env: Path, receiver: str
) -> None:
    at = f"{DAY.isoformat()}T10:00:00+00:00"
    events = {
        "msg_1": {"type": "order.shipped", "timestamp": at, "data": {"id": "ord_1"}},
        "msg_2": {"type": "order.delivered", "timestamp": at, "data": {"id": "ord_1"}},
        "msg_bad": {"type": "order.shipped", "timestamp": at, "data": ["ord_2"]},
    }
    assert [_post(receiver, m, p) for m, p in events.items()] == [200, 200, 200]
    assert _post(receiver, "msg_1", events["msg_1"]) == 200  # a redelivery is acknowledged, stored once

    platform = Platform(platform_env / "lake", platform_env / "sftp")
    [request] = platform.tick("webhook_events_sensor")
    assert (request.job_name, request.partition_key) == ("shop_events_ingest", DAY.isoformat())
    run = platform.run(request)
    assert run.success
    metadata = run.asset_materializations_for_node("bronze_shop_events")[0].metadata
    assert (metadata["received"].value, metadata["loaded"].value, metadata["quarantined"].value) == (3, 2, 1)
    assert {c.check_name: c.passed for c in run.get_asset_check_evaluations()} == {
        "gx_bronze_gate": True,
        "inbox_conflicts": True,
    }
    [rejected] = platform.table("quarantine", "shop_events")
    assert (rejected["_reasons"], rejected["_source"]) == (["data: required object missing"], "webhook:shop")

    silver = dg.AssetKey(["silver", "stg_shop__events"])
    job = platform.defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(instance=platform.instance, asset_selection=[silver]).success
    with settings.lake().connect() as con:
        settings.lake().attach(con)
        rows = con.execute("select event_id, event_type, subject_id from silver.stg_shop__events order by 1").fetchall()
    assert rows == [("msg_1", "order.shipped", "ord_1"), ("msg_2", "order.delivered", "ord_1")]


def test_an_event_naming_an_erased_address_reaches_bronze_and_the_inbox_redacted(
    inbox_url: str, platform_env: Path, receiver: str
) -> None:
    """Erased before the event was sent: the ingest run redacts the address in bronze and in the inbox's copy,
    and the event itself (and its neighbours) still load."""
    from dagster_project.lib.erasure import Subject, record_requests
    from dagster_project.lib.intake.inbox import Inbox

    record_requests(
        settings.lake(),
        settings.pii_hmac_key().encode(),
        [Subject("email", "gone@example.com")],
        request_id="r",
        requested_at=dt.datetime.now(dt.UTC),
    )
    at = f"{DAY.isoformat()}T10:00:00+00:00"
    named = {"type": "order.shipped", "timestamp": at, "data": {"id": "ord_1", "email": "Gone@Example.com"}}
    other = {"type": "order.shipped", "timestamp": at, "data": {"id": "ord_2", "email": "kept@example.com"}}
    assert [_post(receiver, "msg_1", named), _post(receiver, "msg_2", other)] == [200, 200]

    platform = Platform(platform_env / "lake", platform_env / "sftp")
    [request] = platform.tick("webhook_events_sensor")
    run = platform.run(request)
    assert run.success
    bodies = {r["event_id"]: r["body"] for r in platform.table("bronze", "shop_events")}
    assert set(bodies) == {"msg_1", "msg_2"}
    assert "gone@example.com" not in bodies["msg_1"].lower() and "[erased]" in bodies["msg_1"]
    assert "kept@example.com" in bodies["msg_2"]
    with Inbox(inbox_url) as inbox:
        stored = {e.event_id: e.text for e in inbox.read_for_dates("shop", [DAY])}
    assert "gone@example.com" not in stored["msg_1"].lower() and "kept@example.com" in stored["msg_2"]
