"""Retention against real Delta tables, a real landing zone (on a local folder and on the loopback S3 server) and
the real embedded SFTP server, with a controlled clock where the library takes one."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path

import obstore
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import DeltaError

from dagster_project import settings
from dagster_project.lib import retention
from dagster_project.lib.clients.sftp import SftpClient
from dagster_project.lib.intake.landing import (
    UPLOADS,
    LandingExpired,
    LandResult,
    find_by_sha256,
    landed_files,
    partition_prefix,
)
from dagster_project.lib.intake.sftp_inbox import reason_file_name
from dagster_project.lib.lake import Lake
from dagster_project.services.sftp_server import EmbeddedSftpServer
from tests.lakes import LOCAL_AND_S3
from tests.lib.customer_files import customer, customers_csv

NOW = dt.datetime(2025, 12, 31, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


@pytest.fixture(params=LOCAL_AND_S3)
def landing_lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    """The lake, on a local folder or on a bucket of the loopback S3 server (also what `land` lands into)."""
    if request.param == "local":
        return Lake.parse(str(tmp_path / "lake"))
    return Lake.parse(request.getfixturevalue("s3_lake"), settings.lake_storage_options())


@pytest.fixture
def lake(landing_lake: Lake) -> Lake:
    return landing_lake


def _rows(day: dt.date, values: list[int]) -> pa.Table:
    return pa.table(
        {"business_date": pa.array([day] * len(values), pa.date32()), "value": pa.array(values, pa.int64())}
    )


def _write_versions(lake: Lake, layer: str, name: str) -> str:
    """A table partitioned by date whose partitions are replaced a few times (as bronze re-runs do):
    versions 0..3, the current one holding 2025-11-01 -> [30], 2025-11-02 -> [20]."""
    uri = lake.table(layer, name)
    options = lake.delta_options()
    days = dt.date(2025, 11, 1), dt.date(2025, 11, 2)
    write_deltalake(uri, _rows(days[0], [10, 11]), partition_by=["business_date"], storage_options=options)
    for day, values in ((days[1], [20]), (days[0], [30]), (days[0], [30])):
        where = f"business_date = '{day.isoformat()}'"
        write_deltalake(uri, _rows(day, values), mode="overwrite", predicate=where, storage_options=options)
    return uri


def _current(lake: Lake, uri: str) -> list[tuple[str, int]]:
    rows = DeltaTable(uri, storage_options=lake.delta_options()).to_pyarrow_table().to_pylist()
    return sorted((r["business_date"].isoformat(), r["value"]) for r in rows)


def _keys(lake: Lake, prefix: str) -> set[str]:
    return {meta["path"] for batch in obstore.list(lake.store, prefix) for meta in batch}


# -- Delta tables ---------------------------------------------------------------------------------------------


def test_vacuum_removes_old_versions_and_killed_writes_and_keeps_the_current_data(lake: Lake):
    uri = _write_versions(lake, "bronze", "customers")
    silver = _write_versions(lake, "silver", "stg_customers")
    # What a killed write leaves: a data file no commit references.
    orphan = "bronze/customers/business_date=2025-11-01/part-killed-write.parquet"
    obstore.put(lake.store, orphan, b"half a parquet file")
    data_before = {k for k in _keys(lake, "bronze/customers/") if "/_delta_log/" not in k}
    assert DeltaTable(uri, version=0, storage_options=lake.delta_options()).to_pyarrow_table().num_rows == 2

    removal = retention.vacuum_tables(lake, 0)

    assert removal.errors == {}
    # Two files replaced by later versions, and the killed write's.
    assert removal.per_item["bronze.customers"]["files"] == 3
    assert removal.per_item["silver.stg_customers"]["files"] == 2
    assert removal.per_item["bronze.customers"]["log_entries"] >= 4
    assert removal.bytes > 0
    data_after = {k for k in _keys(lake, "bronze/customers/") if "/_delta_log/" not in k}
    assert orphan in data_before - data_after and len(data_before - data_after) == 3
    assert _current(lake, uri) == [("2025-11-01", 30), ("2025-11-02", 20)]
    assert _current(lake, silver) == [("2025-11-01", 30), ("2025-11-02", 20)]
    # Time travel ends at the retention: the old versions' log entries and files are gone.
    with pytest.raises(DeltaError):
        DeltaTable(uri, version=0, storage_options=lake.delta_options()).to_pyarrow_table()
    configuration = DeltaTable(uri, storage_options=lake.delta_options()).metadata().configuration
    assert configuration["delta.logRetentionDuration"] == "interval 0 hours"
    assert configuration["delta.deletedFileRetentionDuration"] == "interval 0 hours"


def test_vacuum_keeps_every_version_younger_than_the_retention(lake: Lake):
    uri = _write_versions(lake, "bronze", "customers")
    obstore.put(lake.store, "bronze/customers/business_date=2025-11-01/part-in-flight.parquet", b"a write going on")
    before = _keys(lake, "bronze/customers/")

    removal = retention.vacuum_tables(lake, 168)

    assert removal.counts == {"files": 0, "log_entries": 0} and removal.errors == {}
    # Nothing removed (an ongoing write's file included), a checkpoint added, the property set for later.
    assert before <= _keys(lake, "bronze/customers/")
    old = DeltaTable(uri, version=0, storage_options=lake.delta_options()).to_pyarrow_table()
    assert old.num_rows == 2
    configuration = DeltaTable(uri, storage_options=lake.delta_options()).metadata().configuration
    assert configuration["delta.logRetentionDuration"] == "interval 168 hours"


def test_a_dry_run_of_the_vacuum_lists_what_it_would_remove_and_removes_nothing(lake: Lake):
    uri = _write_versions(lake, "bronze", "customers")
    before = _keys(lake, "bronze/customers/")

    removal = retention.vacuum_tables(lake, 0, dry_run=True)

    assert removal.per_item["bronze.customers"]["files"] == 2 and removal.dry_run
    assert _keys(lake, "bronze/customers/") == before
    assert DeltaTable(uri, version=0, storage_options=lake.delta_options()).to_pyarrow_table().num_rows == 2


def test_vacuum_reaches_tables_of_layers_beyond_the_platforms_own_and_keeps_going_past_a_broken_one(lake: Lake):
    _write_versions(lake, "snapshots", "customers_history")
    obstore.put(lake.store, "gold/broken/_delta_log/00000000000000000000.json", b"not a delta log")

    removal = retention.vacuum_tables(lake, 0)

    assert removal.per_item["snapshots.customers_history"]["files"] == 2
    assert set(removal.errors) == {"gold.broken"}
    assert "landing" not in retention.delta_layers(lake)


def test_kept_for_ever_the_vacuum_touches_nothing(lake: Lake):
    _write_versions(lake, "bronze", "customers")
    before = _keys(lake, "bronze/customers/")
    assert retention.vacuum_tables(lake, None).receipt()["kept"] == "for ever"
    assert _keys(lake, "bronze/customers/") == before


# -- quarantine rows ------------------------------------------------------------------------------------------


def test_quarantine_partitions_older_than_the_retention_are_deleted_and_younger_ones_kept(lake: Lake):
    uri = lake.table("quarantine", "customers")
    options = lake.delta_options()
    today = NOW.date()
    for age, values in ((120, [1, 2]), (91, [3]), (90, [4]), (5, [5, 6])):
        write_deltalake(
            uri,
            _rows(today - age * DAY, values),
            mode="append",
            partition_by=["business_date"],
            storage_options=options,
        )

    dry = retention.expire_quarantine(lake, 90, now=NOW, dry_run=True)
    assert dry.counts == {"partitions": 2, "rows": 3, "files": 2} and len(_current(lake, uri)) == 6

    removal = retention.expire_quarantine(lake, 90, now=NOW)

    assert removal.counts == {"partitions": 2, "rows": 3, "files": 2} and removal.bytes > 0
    assert [v for _, v in _current(lake, uri)] == [4, 5, 6]
    latest = DeltaTable(uri, storage_options=options).history(1)[0]
    assert latest["operation"] == "DELETE"
    # Only whole files were dropped: nothing rewritten, nothing added.
    assert latest["operationMetrics"]["num_added_files"] == 0
    # Run again: nothing left to delete, and no empty commit.
    version = DeltaTable(uri, storage_options=options).version()
    assert retention.expire_quarantine(lake, 90, now=NOW).counts == {}
    assert DeltaTable(uri, storage_options=options).version() == version


# -- landing --------------------------------------------------------------------------------------------------


def test_landing_partitions_older_than_the_retention_expire_with_a_marker(lake: Lake, land: Callable[..., LandResult]):
    old = land(customers_csv([customer(1)]), business_date="2025-11-01", sequence=1).manifest
    land(customers_csv([customer(2)]), business_date="2025-11-01", sequence=2)
    young = land(customers_csv([customer(3)]), business_date="2025-12-30", sequence=3).manifest
    old_prefix = partition_prefix("customers", "2025-11-01") + "/"

    dry = retention.expire_landing(lake, 30, now=NOW, dry_run=True)
    assert dry.counts == {"partitions": 1, "files": 2, "manifests": 2, "index_entries": 2}
    assert (
        len(landed_files(lake, "customers", "2025-11-01")) == 2
        and retention.expired(lake, "customers", "2025-11-01") is None
    )

    removal = retention.expire_landing(lake, 30, now=NOW)

    assert removal.counts == {"partitions": 1, "files": 2, "manifests": 2, "index_entries": 2}
    assert removal.per_item == {"customers": {**removal.counts, "bytes": removal.bytes}}
    assert _keys(lake, old_prefix) == {old_prefix + retention.EXPIRED_MARKER}
    with pytest.raises(LandingExpired, match="retention removed this partition's landed files"):
        landed_files(lake, "customers", "2025-11-01")  # a rebuild refuses instead of emptying bronze
    assert find_by_sha256(lake, "customers", old.sha256) is None
    marker = retention.expired(lake, "customers", "2025-11-01")
    assert marker is not None
    assert marker["setting"] == "MEDALLION_RETENTION_LANDING_DAYS" and marker["days"] == 30
    assert marker["expired_at"] == NOW.isoformat() and len(marker["files"]) == 2
    # The young partition is untouched, and its content still indexed.
    assert [m.file_name for m in landed_files(lake, "customers", "2025-12-30")] == [young.file_name]
    assert find_by_sha256(lake, "customers", young.sha256) == young
    assert retention.expired(lake, "customers", "2025-12-30") is None
    # Nothing left to do on the next run.
    assert retention.expire_landing(lake, 30, now=NOW).counts == {}


def test_landing_is_kept_for_ever_by_default(lake: Lake, land: Callable[..., LandResult], monkeypatch):
    monkeypatch.delenv("MEDALLION_RETENTION_LANDING_DAYS", raising=False)
    land(customers_csv([customer(1)]), business_date="2020-01-01")
    days = settings.retention().landing_days
    assert days is None
    assert retention.expire_landing(lake, days, now=NOW).receipt()["kept"] == "for ever"
    assert len(landed_files(lake, "customers", "2020-01-01")) == 1


def test_upload_leftovers_older_than_the_retention_are_removed(lake: Lake):
    obstore.put(lake.store, f"{UPLOADS}/interrupted", b"x" * 10)
    obstore.put(lake.store, "landing/customers/business_date=2025-11-01/keep.csv", b"landed")
    written = next(iter(obstore.list(lake.store, f"{UPLOADS}/")))[0]["last_modified"]

    assert retention.expire_uploads(lake, 24, now=written + dt.timedelta(hours=23)).counts == {"objects": 0}
    assert _keys(lake, f"{UPLOADS}/") == {f"{UPLOADS}/interrupted"}

    removal = retention.expire_uploads(lake, 24, now=written + dt.timedelta(hours=25))

    assert removal.counts == {"objects": 1} and removal.bytes == 10
    assert _keys(lake, f"{UPLOADS}/") == set()
    assert _keys(lake, "landing/customers/") == {"landing/customers/business_date=2025-11-01/keep.csv"}


# -- settings -------------------------------------------------------------------------------------------------


def test_retention_settings_have_documented_defaults_and_refuse_nonsense(monkeypatch: pytest.MonkeyPatch):
    for name in list(os.environ):
        if name.startswith("MEDALLION_RETENTION_"):
            monkeypatch.delenv(name)
    assert settings.retention() == settings.RetentionSettings(
        landing_days=None,
        quarantine_days=90,
        delta_versions_hours=168,
        run_history_days=30,
        sftp_archive_days=30,
        sftp_quarantine_days=90,
        uploads_hours=24,
        cron="30 3 * * *",
    )
    monkeypatch.setenv("MEDALLION_RETENTION_QUARANTINE_DAYS", "0")
    monkeypatch.setenv("MEDALLION_RETENTION_LANDING_DAYS", "365")
    assert settings.retention().quarantine_days is None and settings.retention().landing_days == 365
    monkeypatch.setenv("MEDALLION_RETENTION_RUN_HISTORY_DAYS", "-1")
    with pytest.raises(ValueError, match="MEDALLION_RETENTION_RUN_HISTORY_DAYS='-1'.*0 to keep for ever"):
        settings.retention()


# -- SFTP -----------------------------------------------------------------------------------------------------


def _age(server: EmbeddedSftpServer, path: str, days: float) -> None:
    when = (NOW - dt.timedelta(days=days)).timestamp()
    os.utime(server.root / path, (when, when))


@pytest.mark.sftp
def test_sftp_archive_and_quarantine_files_older_than_the_retention_are_removed(
    sftp_server: EmbeddedSftpServer, sftp_client: SftpClient
):
    for folder in ("archive", "quarantine"):
        (sftp_server.root / folder).mkdir(exist_ok=True)
    sftp_client.write_bytes("archive/old.csv", b"a" * 7)
    sftp_client.write_bytes("archive/young.csv", b"b" * 5)
    _age(sftp_server, "archive/old.csv", 31)
    _age(sftp_server, "archive/young.csv", 29)
    # Quarantined long ago; quarantined yesterday but uploaded long ago (the move keeps the upload's mtime);
    # a reason file left alone.
    long_name = "x" * 240 + ".csv"
    for name, uploaded, quarantined in (("gone.csv", 100, 95), (long_name, 100, 1)):
        sftp_client.write_bytes(f"quarantine/{name}", b"rejected")
        sftp_client.write_bytes(f"quarantine/{reason_file_name(name)}", b"why\n")
        _age(sftp_server, f"quarantine/{name}", uploaded)
        _age(sftp_server, f"quarantine/{reason_file_name(name)}", quarantined)
    sftp_client.write_bytes("quarantine/lonely.csv.reason.txt", b"why\n")
    _age(sftp_server, "quarantine/lonely.csv.reason.txt", 200)

    dry = retention.expire_sftp_folder(sftp_client, "archive", 30, now=NOW, dry_run=True)
    assert dry.counts == {"files": 1} and dry.bytes == 7
    assert {f.name for f in sftp_client.list_dir("archive")} == {"old.csv", "young.csv"}

    archive = retention.expire_sftp_folder(sftp_client, "archive", 30, now=NOW)
    quarantine = retention.expire_sftp_folder(sftp_client, "quarantine", 30, now=NOW)

    assert archive.counts == {"files": 1} and archive.bytes == 7
    assert {f.name for f in sftp_client.list_dir("archive")} == {"young.csv"}
    assert quarantine.counts == {"files": 3}
    assert {f.name for f in sftp_client.list_dir("quarantine")} == {long_name, reason_file_name(long_name)}
    # A folder that does not exist holds nothing to remove.
    assert retention.expire_sftp_folder(sftp_client, "nowhere", 30, now=NOW).counts == {}
