"""Shop orders: the Airbyte sync asset against the loopback fake, and bronze orders from landed output, with
the lake on a local folder or on an S3 bucket (the loopback S3 server)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from deltalake import DeltaTable

from dagster_project import settings
from dagster_project.defs.airbyte.assets import (
    BRONZE_KEY,
    SYNC_KEY,
    bronze_orders,
    bronze_orders_gate,
    shop_orders_sync,
)
from dagster_project.defs.airbyte.resources import AirbyteResource
from dagster_project.defs.common.resources import LakeResource, PiiKeyResource
from dagster_project.lib.bronze.readers.airbyte_records import stream_folder
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.registry import ORDERS
from dagster_project.samples.orders import land_sample_orders
from tests.fakes.airbyte_server import FakeAirbyteServer, JobScript
from tests.lakes import LOCAL_AND_S3

DAY = "2025-11-03"
CONNECTION = "6a1a4f3e-0000-4000-8000-00000000c0de"
VOLATILE = {"_ingested_at", "_run_id"}


def _record(order_id: int | None, extracted_ms: int, **data: Any) -> dict[str, Any]:
    values = {
        "order_id": order_id,
        "customer_id": 7,
        "order_date": DAY,
        "ordered_at": f"{DAY}T10:00:00Z",
        "total_amount": "19.90",
        "currency": "EUR",
        "status": "placed",
    } | data
    changes = values.pop("_changes", [])
    return {
        "_airbyte_raw_id": str(uuid.uuid4()),
        "_airbyte_extracted_at": extracted_ms,
        "_airbyte_meta": {"sync_id": 1, "changes": changes},
        "_airbyte_generation_id": 0,
        **values,
    }


def _write(directory: Path, name: str, records: list[dict[str, Any]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text("".join(json.dumps(r) + "\n" for r in records))


SYNC_1 = 1762221600000  # 2025-11-04T02:00:00Z
SYNC_2 = 1762308000000  # 2025-11-05T02:00:00Z


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    directory = Path(stream_folder(ORDERS, Lake.parse(str(root))).root)
    resend = _record(3, SYNC_1 + 20)
    _write(
        directory,
        f"2025_11_04_{SYNC_1}_0.jsonl",
        [
            _record(1, SYNC_1),
            _record(2, SYNC_1 + 10, total_amount="5.00"),
            resend,
            {**resend, "_airbyte_raw_id": str(uuid.uuid4())},  # at least once: the same record twice
            _record(4, SYNC_1 + 30, currency="eur", total_amount="-1.00", status="refunded"),
            _record(5, SYNC_1 + 40, total_amount="12.345", ordered_at="yesterday"),
            _record(None, SYNC_1 + 50),
            _record(6, SYNC_1 + 60, order_date="2025-11-31"),
            _record(
                8,
                SYNC_1 + 70,
                customer_id=None,
                _changes=[{"field": "customer_id", "change": "NULLED", "reason": "SOURCE_SERIALIZATION_ERROR"}],
            ),
        ],
    )
    # The next sync delivers order 1 again, paid, and order 2 again but extracted earlier (kept: the older one
    # loses only to a later extraction).
    _write(
        directory,
        f"2025_11_05_{SYNC_2}_0.jsonl",
        [_record(1, SYNC_2, status="paid"), _record(2, SYNC_1 - 1000, total_amount="999.00")],
    )
    return root


def _bronze_run(lake: Path | str, instance: dg.DagsterInstance, partition: str = DAY) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [bronze_orders, bronze_orders_gate],
        partition_key=partition,
        instance=instance,
        resources={"lake": LakeResource(root=str(lake)), "pii_key": PiiKeyResource()},
    )


def _table(lake: Path | str, layer: str) -> Any:
    where = Lake.parse(str(lake), settings.lake_storage_options())
    return DeltaTable(where.table(layer, "orders"), storage_options=where.delta_options()).to_pyarrow_table()


def _rows(lake: Path, layer: str, partition: str = DAY) -> list[dict[str, Any]]:
    rows = _table(lake, layer).to_pylist()
    return sorted(
        (
            {k: v for k, v in r.items() if k not in VOLATILE}
            for r in rows
            if r["business_date"].isoformat() == partition
        ),
        key=lambda r: (r.get("order_id") or 0, r.get("_source_file"), r.get("_source_row")),
    )


def _metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict[str, Any]:
    [event] = [m for m in result.get_asset_materialization_events() if m.asset_key == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_bronze_orders_keeps_latest_delivery_and_quarantines_every_reason(lake: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    result = _bronze_run(lake, instance)
    assert result.success

    bronze = _rows(lake, "bronze")
    assert [(r["order_id"], r["status"], str(r["total_amount"])) for r in bronze] == [
        (1, "paid", "19.90"),  # the later extraction wins
        (2, "placed", "5.00"),
        (3, "placed", "19.90"),
    ]
    assert bronze[0]["_source_file"] == f"2025_11_05_{SYNC_2}_0.jsonl"
    assert bronze[0]["_airbyte_extracted_at"] == dt.datetime(2025, 11, 5, 2, tzinfo=dt.UTC)
    assert all(r["_source"] == "airbyte:shop/orders" and len(r["_checksum_sha256"]) == 64 for r in bronze)

    quarantine = {json.loads(r["_raw_record"])["order_id"]: r["_reasons"] for r in _rows(lake, "quarantine")}
    assert sorted(quarantine[4]) == [
        "currency: does not match the expected pattern",
        "status: not one of placed, paid, shipped, cancelled",
        "total_amount: below the minimum 0",
    ]
    assert sorted(quarantine[5]) == [
        "ordered_at: not an ISO 8601 timestamp",
        "total_amount: not a decimal number with at most 2 decimal places",
    ]
    assert quarantine[None] == ["order_id: required value missing"]
    assert quarantine[8] == ["customer_id: nulled by Airbyte (SOURCE_SERIALIZATION_ERROR)"]
    # Not a real date: the record belongs to the day it was extracted on, quarantined there.
    assert _bronze_run(lake, instance, "2025-11-04").success
    assert [json.loads(r["_raw_record"])["order_id"] for r in _rows(lake, "quarantine", "2025-11-04")] == [6]

    meta = _metadata(result, BRONZE_KEY)
    assert (meta["loaded"], meta["quarantined"], meta["duplicates"]) == (3, 4, 3)
    assert meta["received"] == meta["loaded"] + meta["quarantined"] + meta["duplicates"] == 10
    [check] = result.get_asset_check_evaluations()
    assert check.passed, check.description


def test_rebuilding_a_partition_gives_the_same_rows(lake: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    assert _bronze_run(lake, instance).success
    first = (_rows(lake, "bronze"), _rows(lake, "quarantine"))
    assert _bronze_run(lake, instance).success
    assert (_rows(lake, "bronze"), _rows(lake, "quarantine")) == first


@pytest.fixture(params=LOCAL_AND_S3)
def lake_root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A lake in the test's folder, or on an S3 bucket of the loopback S3 server."""
    return str(tmp_path / "lake") if request.param == "local" else request.getfixturevalue("s3_lake")


def test_sample_output_loads_one_row_per_order(lake_root: str) -> None:
    lake = lake_root
    days = [dt.date(2025, 11, 3), dt.date(2025, 11, 4)]
    landed = land_sample_orders(lake, days)
    instance = dg.DagsterInstance.ephemeral()
    for day in days:
        result = _bronze_run(lake, instance, day.isoformat())
        meta = _metadata(result, BRONZE_KEY)
        assert meta["loaded"] == landed["orders_by_date"][day.isoformat()]
        assert meta["duplicates"] > 0  # the sample re-delivers orders
        assert result.get_asset_check_evaluations()[0].passed
    table = _table(lake, "bronze")
    assert table.num_rows == len(set(table["order_id"].to_pylist())) == landed["orders"]
    assert 1 <= min(table["customer_id"].to_pylist()) and max(table["customer_id"].to_pylist()) <= 600


# --- the sync asset against the fake Airbyte API on loopback ---------------------------------------------


@pytest.fixture
def server() -> Iterator[FakeAirbyteServer]:
    with FakeAirbyteServer(client_id=f"client-{uuid.uuid4()}", client_secret=f"secret-{uuid.uuid4()}") as s:
        yield s


def _sync_run(server: FakeAirbyteServer, lake: Path | str) -> dg.ExecuteInProcessResult:
    airbyte = AirbyteResource(
        client_id=server.client_id,
        client_secret=server.client_secret,
        server_url=server.url,
        connection_id=CONNECTION,
        poll_interval=0.02,
        # Ceilings only, never reached when things work: the scripted jobs end after a poll or two, so a
        # slow machine makes the test slower, not red.
        max_wait=600,
        request_timeout=60,
    )
    return dg.materialize(
        [shop_orders_sync],
        resources={"airbyte": airbyte, "lake": LakeResource(root=str(lake)), "pii_key": PiiKeyResource()},
        raise_on_error=False,
    )


def test_sync_asset_records_the_job_and_the_dates_it_landed(server: FakeAirbyteServer, lake_root: str) -> None:
    lake = lake_root
    server.script_next_job(JobScript(steps=("running", "succeeded"), rows_synced=160, bytes_synced=4096))
    # The destination writes while the job runs.
    server.before_create = lambda: land_sample_orders(lake, [dt.date(2025, 11, 3), dt.date(2025, 11, 4)])

    result = _sync_run(server, lake)

    assert result.success
    [job] = server.jobs(CONNECTION)
    meta = _metadata(result, SYNC_KEY)
    assert meta["job_id"] == job["jobId"]
    assert (meta["status"], meta["rows_synced"], meta["bytes_synced"]) == ("succeeded", 160, 4096)
    assert meta["business_dates"] == ["2025-11-03", "2025-11-04"]
    assert len(meta["new_files"]) == 2
    assert len(server.calls("create_job")) == 1


def test_failed_sync_job_fails_the_asset_clearly(server: FakeAirbyteServer, tmp_path: Path) -> None:
    server.script_next_job(JobScript.ending("failed"))

    result = _sync_run(server, tmp_path / "lake")

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message if failure.step_failure_data.error else ""
    description = failure.step_failure_data.user_failure_data.description
    assert f"of connection {CONNECTION} ended with status 'failed'" in description
    assert server.client_secret not in description + message
    assert not result.get_asset_materialization_events()
