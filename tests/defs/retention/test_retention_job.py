"""The retention job and the run-history retention, run by a real Dagster instance against a local lake and the
embedded SFTP server; the run history with a controlled clock."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import obstore
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from dagster_project import settings
from dagster_project.defs.common.resources import LakeResource
from dagster_project.defs.retention.jobs import retention_job
from dagster_project.defs.retention.resources import RetentionResource
from dagster_project.defs.retention.run_history import expire_run_history
from dagster_project.defs.sftp.resources import SftpResource
from dagster_project.lib import retention
from dagster_project.lib.checksums import crc32_hex
from dagster_project.lib.intake.landing import UPLOADS, LandingExpired, land_file, landed_files
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.naming import parse_file_name
from dagster_project.lib.sources.registry import CUSTOMERS
from dagster_project.services.sftp_server import EmbeddedSftpServer
from tests.lib.customer_files import customer, customers_csv

DAILY = dg.DailyPartitionsDefinition(start_date="2025-01-01")


@dg.asset(partitions_def=DAILY)
def daily_thing() -> int:
    return 1


@dg.asset
def whole_thing() -> int:
    return 1


@dg.op
def nothing() -> None:
    pass


@dg.job
def plain_job() -> None:
    nothing()


@dg.op
def boom() -> None:
    raise RuntimeError("boom")


@dg.job
def failing_job() -> None:
    boom()


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def _status(instance: dg.DagsterInstance, run_id: str) -> str | None:
    run = instance.get_run_by_id(run_id)
    return run.status.value if run else None


def test_finished_runs_past_the_retention_are_deleted_but_not_the_latest_materializations_nor_unfinished_runs(
    instance: dg.DagsterInstance,
):
    superseded = dg.materialize([daily_thing], partition_key="2025-01-02", instance=instance).run_id
    latest = dg.materialize([daily_thing], partition_key="2025-01-02", instance=instance).run_id
    other_partition = dg.materialize([daily_thing], partition_key="2025-01-03", instance=instance).run_id
    whole_old = dg.materialize([whole_thing], instance=instance).run_id
    whole_latest = dg.materialize([whole_thing], instance=instance).run_id
    plain = plain_job.execute_in_process(instance=instance).run_id
    failed = failing_job.execute_in_process(instance=instance, raise_on_error=False).run_id
    waiting = instance.create_run_for_job(plain_job).run_id  # not started: never touched
    now = dt.datetime.now(dt.UTC)

    assert expire_run_history(instance, 30, now=now).counts == {}  # every run is younger than 30 days
    dry = expire_run_history(instance, 30, now=now + dt.timedelta(days=31), dry_run=True)
    assert dry.counts == {"runs": 4, "kept_latest_materialization": 3} and _status(instance, plain) == "SUCCESS"

    removal = expire_run_history(instance, 30, now=now + dt.timedelta(days=31))

    assert removal.counts == {"runs": 4, "kept_latest_materialization": 3}
    assert removal.per_item == {"SUCCESS": {"runs": 3, "kept_latest_materialization": 3}, "FAILURE": {"runs": 1}}
    assert [_status(instance, r) for r in (superseded, whole_old, plain, failed)] == [None] * 4
    assert _status(instance, latest) == _status(instance, other_partition) == _status(instance, whole_latest)
    assert _status(instance, whole_latest) == "SUCCESS" and _status(instance, waiting) == "NOT_STARTED"
    # The asset catalog still knows every partition was materialized.
    assert instance.get_materialized_partitions(daily_thing.key) == {"2025-01-02", "2025-01-03"}
    assert not instance.get_records_for_run(superseded).records  # its event log went with it
    assert expire_run_history(instance, None, now=now + dt.timedelta(days=999)).counts == {}


def _age(path: Path, days: float) -> None:
    when = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).timestamp()
    os.utime(path, (when, when))


def _land(lake: Lake, tmp_path: Path, business_date: str, customer_id: int) -> None:
    data = customers_csv([customer(customer_id)]).encode()
    name = CUSTOMERS.files.file_name(business_date, customer_id, crc32_hex(data))
    staged = tmp_path / name
    staged.write_bytes(data)
    land_file(
        lake,
        parse_file_name(name),
        staged,
        source="sftp",
        source_uri=f"sftp://partner.example/inbox/{name}",
        received_at=dt.datetime.now(dt.UTC),
    )


def _job(spans: settings.RetentionSettings | None = None) -> dg.JobDefinition:
    """The retention job with the resources the code location binds from settings (`spans` for the retention's)."""
    defs = dg.Definitions(
        jobs=[retention_job],
        resources={
            "lake": LakeResource(root=settings.lake_root()),
            "sftp": SftpResource.from_settings(settings.sftp()),
            "retention": RetentionResource.from_settings(spans or settings.retention()),
        },
    )
    return defs.resolve_job_def("retention")


def _outputs(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, object]]:
    """Each step's receipt (its output's metadata), by step."""
    return {
        event.step_key: {k: v.value for k, v in event.step_output_data.metadata.items()}
        for event in result.all_events
        if event.event_type == dg.DagsterEventType.STEP_OUTPUT and event.step_key
    }


@pytest.mark.sftp
def test_the_retention_job_applies_every_layer_and_reports_a_receipt_without_contents(
    sftp_env: EmbeddedSftpServer, platform_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MEDALLION_RETENTION_LANDING_DAYS", "30")
    lake = settings.lake()
    today = dt.datetime.now(dt.UTC).date()
    old_day, young_day = (today - dt.timedelta(days=40)).isoformat(), today.isoformat()
    _land(lake, tmp_path, old_day, 1)
    _land(lake, tmp_path, young_day, 2)
    obstore.put(lake.store, f"{UPLOADS}/interrupted", b"half")
    quarantine = lake.table("quarantine", "customers")
    for day in (today - dt.timedelta(days=100), today):
        rows = pa.table({"business_date": pa.array([day], pa.date32()), "_raw": ["ada.lovelace9@example.com"]})
        write_deltalake(quarantine, rows, mode="append", partition_by=["business_date"])
    for folder in ("archive", "quarantine"):
        (sftp_env.root / folder).mkdir(exist_ok=True)
    (sftp_env.root / "archive" / "old.csv").write_bytes(b"archived long ago")
    _age(sftp_env.root / "archive" / "old.csv", 31)
    (sftp_env.root / "archive" / "young.csv").write_bytes(b"archived yesterday")
    _age(sftp_env.root / "archive" / "young.csv", 1)

    # A run history kept 0 days: every finished run is past it, while the retention run itself is running.
    job = _job(dataclasses.replace(settings.retention(), run_history_days=0))
    with dg.instance_for_test() as instance:
        earlier = dg.materialize([whole_thing], instance=instance).run_id
        plain = plain_job.execute_in_process(instance=instance).run_id
        result = job.execute_in_process(instance=instance)

        assert result.success
        receipts = _outputs(result)
        assert receipts["expire_landing_partitions"]["partitions"] == 1
        assert receipts["expire_landing_partitions"]["kept"] == "30 days"
        assert receipts["expire_quarantine_rows"]["rows"] == 1
        assert receipts["clear_landing_uploads"]["objects"] == 0  # written just now: kept a day
        assert receipts["expire_sftp_files"]["files"] == 1
        assert receipts["expire_dagster_runs"]["runs"] == 1
        assert receipts["vacuum_delta_tables"]["kept"] == "168 hours"
        assert instance.get_run_by_id(plain) is None and instance.get_run_by_id(earlier) is not None
        assert instance.get_run_by_id(result.run_id) is not None
        # No receipt, log line or event of the run quotes a record's value.
        events = json.dumps([str(e) for e in instance.all_logs(result.run_id)])
        assert "ada.lovelace" not in events

    assert retention.expired(lake, "customers", old_day)
    with pytest.raises(LandingExpired):
        landed_files(lake, "customers", old_day)
    assert len(landed_files(lake, "customers", young_day)) == 1
    assert [r["business_date"] for r in DeltaTable(quarantine).to_pyarrow_table().to_pylist()] == [today]
    assert "delta.logRetentionDuration" in DeltaTable(quarantine).metadata().configuration
    assert sorted(p.name for p in (sftp_env.root / "archive").iterdir()) == ["young.csv"]


@pytest.mark.sftp
def test_a_dry_run_reports_and_removes_nothing(
    sftp_env: EmbeddedSftpServer, platform_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MEDALLION_RETENTION_LANDING_DAYS", "30")
    lake = settings.lake()
    old_day = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=40)).isoformat()
    _land(lake, tmp_path, old_day, 1)
    (sftp_env.root / "archive").mkdir(exist_ok=True)
    (sftp_env.root / "archive" / "old.csv").write_bytes(b"archived long ago")
    _age(sftp_env.root / "archive" / "old.csv", 31)

    job = _job()
    with dg.instance_for_test() as instance:
        receipts = _outputs(job.execute_in_process(instance=instance, run_config={"dry_run": True}))

    assert receipts["expire_landing_partitions"]["partitions"] == 1
    assert receipts["expire_landing_partitions"]["dry_run"] is True
    assert receipts["expire_sftp_files"]["files"] == 1
    assert len(landed_files(lake, "customers", old_day)) == 1 and retention.expired(lake, "customers", old_day) is None
    assert (sftp_env.root / "archive" / "old.csv").exists()


def test_an_sftp_server_it_cannot_reach_fails_that_step_only(platform_env: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MEDALLION_SFTP_PRIVATE_KEY", str(platform_env / "no-such-key"))
    job = _job()
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)

    assert not result.success
    failed = {e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE}
    assert failed == {"expire_sftp_files"}
    assert set(_outputs(result)) == {
        "vacuum_delta_tables",
        "expire_quarantine_rows",
        "expire_landing_partitions",
        "clear_landing_uploads",
        "expire_dagster_runs",
    }
