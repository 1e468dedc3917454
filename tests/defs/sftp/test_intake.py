"""The SFTP intake against a real SFTP server on loopback and a real Dagster instance, with the lake on a local
folder or on an S3 bucket (the loopback S3 server)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path
from typing import Any

import dagster as dg
import obstore
import pytest
from deltalake import DeltaTable

from dagster_project import settings
from dagster_project.definitions import defs as load_defs
from dagster_project.defs.common.partitions import daily_partitions
from dagster_project.defs.sftp.assets import INBOX_KEY
from dagster_project.defs.sftp.resources import SftpResource
from dagster_project.defs.sftp.sensors import build_inbox_sensor
from dagster_project.lib.checksums import crc32_hex
from dagster_project.lib.clients.sftp import HostKeyRefused, SftpClient
from dagster_project.lib.intake import sftp_inbox
from dagster_project.lib.intake.landing import MANIFEST_SUFFIX, landed_files
from dagster_project.lib.intake.sftp_inbox import reason_file_name
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.registry import CUSTOMERS
from dagster_project.samples.partner_files import write_customer_files
from dagster_project.services.sftp_server import EmbeddedSftpServer
from tests.lakes import LOCAL_AND_S3
from tests.lib.customer_files import customer, customers_csv, same_crc32

pytestmark = pytest.mark.sftp

DAYS = [dt.date(2025, 11, 3), dt.date(2025, 11, 4)]


class Intake:
    """Drives the inbox sensor and the runs it asks for the way the daemon does: each tick is evaluated through
    `evaluate_tick`, which resolves every run request against its job (a partition key the job does not have
    fails the tick there, as on the daemon)."""

    def __init__(self, server: EmbeddedSftpServer, lake: Lake):
        self.server = server
        self.inbox = server.root / "inbox"
        self.lake = lake
        self.defs = load_defs()
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursor: str | None = None
        self.last: Any = None  # what the last tick's `evaluate_tick` returned

    def tick(
        self, resource: SftpResource | None = None, *, sensor: dg.SensorDefinition | None = None
    ) -> list[dg.RunRequest]:
        sensor = sensor or self.defs.resolve_sensor_def("sftp_inbox_sensor")
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            definitions=self.defs,
            resources={"sftp": resource or SftpResource.from_settings(settings.sftp())},
        )
        self.last = sensor.evaluate_tick(context)
        self.cursor = self.last.cursor
        requests = list(self.last.run_requests or [])
        assert all(r.partition_key is None or daily_partitions.has_partition_key(r.partition_key) for r in requests)
        return requests

    def take_all_requests(self) -> list[dg.RunRequest]:
        """Two looks at the inbox: a file must hold still between them."""
        return self.tick() + self.tick()

    def take_all(self) -> list[dg.ExecuteInProcessResult]:
        """Two looks at the inbox, then every requested run."""
        return [self.run(r) for r in self.take_all_requests()]

    def run(self, request: dg.RunRequest, *, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_job_def(request.job_name)
        return job.execute_in_process(
            instance=self.instance,
            partition_key=request.partition_key,
            run_config=request.run_config,
            tags=request.tags,
            raise_on_error=raise_on_error,
        )

    def bronze(self) -> list[dict]:
        return self._table("bronze")

    def quarantine(self) -> list[dict]:
        return self._table("quarantine")

    def _table(self, layer: str) -> list[dict]:
        uri = self.lake.table(layer, "customers")
        return DeltaTable(uri, storage_options=self.lake.delta_options()).to_pyarrow_table().to_pylist()

    def landed(self) -> list[str]:
        """Names of the files in the customers landing zone (landed or not), wherever the lake is."""
        return sorted(
            meta["path"].rsplit("/", 1)[-1]
            for batch in obstore.list(self.lake.store, "landing/customers/")
            for meta in batch
            if "/business_date=" in meta["path"] and not meta["path"].endswith(MANIFEST_SUFFIX)
        )


@pytest.fixture
def intake(sftp_env: EmbeddedSftpServer, platform_env: Path, request: pytest.FixtureRequest) -> Intake:
    """The intake with the lake in the test's folder, or on an S3 bucket when parametrized with "s3"."""
    on_s3 = getattr(request, "param", "local") == "s3"
    if on_s3:
        request.getfixturevalue("s3_lake")  # MEDALLION_LAKE_ROOT=s3://<new bucket>/lake and the AWS variables
    lake = settings.lake()
    assert lake.is_local != on_s3
    return Intake(sftp_env, lake)


def _files(tmp_path: Path):
    return write_customer_files(tmp_path / "generated", DAYS, customers=60, changes_per_day=20)


@pytest.mark.parametrize("intake", LOCAL_AND_S3, indirect=True)
def test_good_rows_land_and_bad_rows_are_quarantined_with_reasons(intake: Intake, tmp_path: Path):
    files = _files(tmp_path)
    for f in files:
        (intake.inbox / f.path.name).write_bytes(f.path.read_bytes())

    runs = intake.take_all()

    assert [r.success for r in runs] == [True, True]
    bronze, quarantine = intake.bronze(), intake.quarantine()
    for f in files:
        day = dt.date.fromisoformat(f.business_date)
        assert sum(r["business_date"] == day for r in bronze) == f.good
        rejected = [r for r in quarantine if r["business_date"] == day]
        assert len(rejected) == f.bad
        assert sorted(reason for r in rejected for reason in r["_reasons"]) == sorted(f.reasons)
        assert all(r["_source_file"] == f.path.name and r["_raw_record"] for r in rejected)
    # Received = bronze + quarantined, as the run reports it.
    for run, f in zip(runs, files, strict=True):
        metadata = run.asset_materializations_for_node("bronze_customers")[0].metadata
        assert metadata["received"].value == f.records
        assert metadata["loaded"].value == f.good
        assert metadata["quarantined"].value == f.bad
    # Every taken file is archived, nothing is left in the inbox, and the landed bytes are the partner's.
    assert sorted(p.name for p in (intake.server.root / "archive").iterdir()) == sorted(f.path.name for f in files)
    assert list(intake.inbox.iterdir()) == []
    assert intake.landed() == sorted(f.path.name for f in files)
    for f in files:
        [manifest] = landed_files(intake.lake, "customers", f.business_date)
        assert bytes(obstore.get(intake.lake.store, manifest.landed_path).bytes()) == f.path.read_bytes()
    # Downloads are staged in the run's local scratch folder, which the run clears.
    assert not list((settings.data_dir() / "staging").glob("*/*"))


def test_partial_upload_is_not_taken_until_complete(intake: Intake, tmp_path: Path):
    f = _files(tmp_path)[0]
    partial = intake.inbox / f"{f.path.name}.part"
    partial.write_bytes(f.path.read_bytes()[:100])

    assert intake.tick() == [] and intake.tick() == []

    partial.rename(intake.inbox / f.path.name)
    assert intake.tick() == []  # first sighting under its final name: wait one more look
    [request] = intake.tick()
    assert request.partition_key == f.business_date
    assert request.tags["medallion/file"] == f.path.name


def test_file_still_growing_waits_until_its_size_holds(intake: Intake, tmp_path: Path):
    f = _files(tmp_path)[0]
    data = f.path.read_bytes()
    target = intake.inbox / f.path.name
    target.write_bytes(data[: len(data) // 2])
    assert intake.tick() == []
    with target.open("ab") as fh:
        fh.write(data[len(data) // 2 :])
    assert intake.tick() == []  # size changed since the last look
    assert len(intake.tick()) == 1


@pytest.mark.parametrize("intake", LOCAL_AND_S3, indirect=True)
def test_same_content_twice_is_ingested_once(intake: Intake, tmp_path: Path):
    f = _files(tmp_path)[0]
    data = f.path.read_bytes()
    again = CUSTOMERS.files.file_name(f.business_date, 2, crc32_hex(data))
    (intake.inbox / f.path.name).write_bytes(data)
    (intake.inbox / again).write_bytes(data)

    runs = intake.take_all()

    assert len(runs) == 2 and all(r.success for r in runs)
    assert len(intake.bronze()) == f.good
    assert len(intake.landed()) == 1
    assert sorted(p.name for p in (intake.server.root / "archive").iterdir()) == sorted([f.path.name, again])


@pytest.mark.parametrize("intake", LOCAL_AND_S3, indirect=True)
def test_other_bytes_resent_under_a_landed_name_are_quarantined_and_landing_is_unchanged(
    intake: Intake, tmp_path: Path
):
    f = _files(tmp_path)[0]
    data = f.path.read_bytes()
    (intake.inbox / f.path.name).write_bytes(data)
    assert [r.success for r in intake.take_all()] == [True]
    before = intake.bronze()
    # The partner re-sends the name with other bytes that still match the CRC32 in the name (and stay text).
    candidates = (same_crc32(data, data.replace(b"@", b"%d@" % i, 1)) for i in range(10_000))
    resent = next(c for c in candidates if all(32 <= b < 127 and b not in b'",' for b in c[-4:]))
    (intake.inbox / f.path.name).write_bytes(resent)

    [run] = intake.take_all()

    [check] = [c for c in run.get_asset_check_evaluations() if c.check_name == "files_accepted"]
    assert not check.passed and f"{f.path.name}: already landed with different content" in check.description
    reason = (intake.server.root / "quarantine" / f"{f.path.name}.reason.txt").read_text()
    assert "landing is immutable" in reason
    [manifest] = landed_files(intake.lake, "customers", f.business_date)
    assert bytes(obstore.get(intake.lake.store, manifest.landed_path).bytes()) == data

    def lineage(rows: list[dict]) -> list[tuple]:
        return sorted((r["_source_file"], r["_source_row"], r["_checksum_sha256"]) for r in rows)

    assert lineage(intake.bronze()) == lineage(before)  # the partition is rebuilt from the landed bytes only


def test_broken_name_is_quarantined_with_its_reason_by_a_run_not_by_the_sensor(intake: Intake, tmp_path: Path):
    f = _files(tmp_path)[0]
    (intake.inbox / "acme_customers_latest.csv").write_bytes(f.path.read_bytes())

    assert intake.tick() == []
    [request] = intake.tick()
    assert request.job_name == "sftp_quarantine"
    assert (intake.inbox / "acme_customers_latest.csv").exists()  # the tick moved nothing

    run = intake.run(request)

    quarantine = intake.server.root / "quarantine"
    assert (quarantine / "acme_customers_latest.csv").exists()
    reason = (quarantine / "acme_customers_latest.csv.reason.txt").read_text()
    assert "acme_customers_latest.csv" in reason and "naming contract" in reason
    assert list(intake.inbox.iterdir()) == []
    [observation] = [e.event_specific_data.asset_observation for e in run.all_events if e.is_asset_observation]
    assert observation.asset_key == INBOX_KEY
    assert (
        observation.metadata["outcome"].value == "quarantined"
        and "naming contract" in observation.metadata["reason"].value
    )


def test_wrong_crc_is_quarantined_and_nothing_lands(intake: Intake, tmp_path: Path):
    f = _files(tmp_path)[0]
    wrong = CUSTOMERS.files.file_name(f.business_date, 1, "DEADBEEF")
    (intake.inbox / wrong).write_bytes(f.path.read_bytes())

    [run] = intake.take_all()

    [check] = [c for c in run.get_asset_check_evaluations() if c.check_name == "files_accepted"]
    assert check.check_name == "files_accepted" and not check.passed
    assert wrong in check.description and "CRC32" in check.description and "DEADBEEF" in check.description
    assert (intake.server.root / "quarantine" / wrong).exists()
    assert intake.landed() == []


def test_unknown_column_rejects_the_file_naming_the_column(intake: Intake, tmp_path: Path):
    text = "customer_id,email,loyalty_tier\n1,a@example.com,gold\n"
    data = text.encode()
    name = CUSTOMERS.files.file_name("2025-11-03", 1, crc32_hex(data))
    (intake.inbox / name).write_bytes(data)

    [run] = intake.take_all()

    [check] = [c for c in run.get_asset_check_evaluations() if c.check_name == "files_accepted"]
    assert not check.passed and "loyalty_tier" in check.description and name in check.description
    reason = (intake.server.root / "quarantine" / f"{name}.reason.txt").read_text()
    assert "unknown column(s) loyalty_tier" in reason


def test_unknown_host_key_is_refused(intake: Intake, tmp_path: Path):
    other = tmp_path / "other_known_hosts"
    with EmbeddedSftpServer(tmp_path / "other" / "root", tmp_path / "other" / "keys") as imposter:
        other.write_text(imposter.known_hosts_path.read_text().replace(str(imposter.port), str(intake.server.port)))
    with pytest.raises(HostKeyRefused, match="not in the pinned known_hosts"):
        intake.tick(SftpResource.from_settings(dataclasses.replace(settings.sftp(), known_hosts_path=other)))


def test_rematerializing_a_partition_changes_nothing(intake: Intake, tmp_path: Path):
    for f in _files(tmp_path):
        (intake.inbox / f.path.name).write_bytes(f.path.read_bytes())
    intake.take_all()
    volatile = {"_ingested_at", "_run_id"}

    def stable(rows: list[dict]) -> list[tuple]:
        return sorted(tuple((k, v) for k, v in sorted(r.items()) if k not in volatile) for r in rows)

    before_bronze, before_quarantine = stable(intake.bronze()), stable(intake.quarantine())
    job = intake.defs.resolve_job_def("customers_intake")
    for _ in range(2):
        for day in DAYS:
            job.execute_in_process(instance=intake.instance, partition_key=day.isoformat())

    assert stable(intake.bronze()) == before_bronze
    assert stable(intake.quarantine()) == before_quarantine


def _put(intake: Intake, data: bytes, business_date: str = "2025-11-03", sequence: int = 1) -> str:
    name = CUSTOMERS.files.file_name(business_date, sequence, crc32_hex(data))
    (intake.inbox / name).write_bytes(data)
    return name


def test_no_entry_stops_the_others_each_gets_its_own_outcome(intake: Intake, tmp_path: Path):
    good = _put(intake, _files(tmp_path)[0].path.read_bytes())
    future = _put(intake, b"customer_id\n1\n", "2999-01-01")  # no partition: the daemon refuses the key
    before = _put(intake, b"customer_id\n1\n", (daily_partitions.start.date() - dt.timedelta(days=1)).isoformat())
    long_name = "acme_customers_" + "x" * 236 + ".csv"  # 255 bytes: no room for `.reason.txt.part`
    (intake.inbox / long_name).write_bytes(b"x")
    unknown = "acme_orders_2025-11-03_seq-00001_crc32-00000000.csv"
    for name in (".profile", "~lock.csv", unknown):
        (intake.inbox / name).write_bytes(b"x")
    (intake.inbox / "old").mkdir()
    (intake.inbox / "latest.csv").symlink_to(good)

    assert intake.tick() == []
    reported = {e.metadata["entry"].value: e.metadata["reason"].value for e in intake.last.asset_events}
    requests = intake.tick()

    assert sorted((r.job_name, r.tags["medallion/file"]) for r in requests) == sorted(
        [("customers_intake", good), *(("sftp_quarantine", n) for n in (future, before, long_name))]
    )
    assert set(reported) == {".profile", "~lock.csv", unknown, "old", "latest.csv"}
    assert reported["old"] == "a directory: never taken; the inbox takes files only"
    assert reported[unknown].startswith(f"{unknown}: unknown feed")
    assert intake.last.asset_events == []  # reported once
    assert all(intake.run(r).success for r in requests)

    assert (intake.server.root / "archive" / good).exists()
    assert len(intake.bronze()) > 0
    quarantine = intake.server.root / "quarantine"
    assert "business date 2999-01-01 is after today's partition" in (quarantine / f"{future}.reason.txt").read_text()
    reason = (quarantine / f"{before}.reason.txt").read_text()
    assert "is before the first partition" in reason and "set MEDALLION_FIRST_BUSINESS_DATE" in reason
    assert (quarantine / long_name).exists()
    assert (quarantine / reason_file_name(long_name)).read_text().startswith(f"{long_name}: does not follow")
    assert sorted(p.name for p in intake.inbox.iterdir()) == sorted(
        [".profile", "~lock.csv", unknown, "old", "latest.csv"]
    )
    assert intake.tick() == []  # nothing left to do, and nothing reported again


def test_a_failed_intake_run_is_asked_for_again_under_a_new_run_key(
    intake: Intake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    name = _put(intake, _files(tmp_path)[0].path.read_bytes())

    def lake_down(*args: object, **kwargs: object) -> None:
        raise OSError("the lake is unavailable")

    land_file = sftp_inbox.land_file
    monkeypatch.setattr(sftp_inbox, "land_file", lake_down)
    [first] = intake.take_all_requests()
    failed = intake.run(first, raise_on_error=False)
    assert not failed.success
    assert (intake.inbox / name).exists()

    monkeypatch.setattr(sftp_inbox, "land_file", land_file)  # the lake is back
    [second] = intake.tick()
    assert second.run_key != first.run_key and second.tags["medallion/intake_key"].endswith(":2")
    assert intake.run(second).success
    assert (intake.server.root / "archive" / name).exists()


def test_a_file_whose_runs_keep_failing_is_quarantined_with_the_reason(
    intake: Intake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MEDALLION_SFTP_INTAKE_ATTEMPTS", "2")
    name = _put(intake, _files(tmp_path)[0].path.read_bytes())
    monkeypatch.setattr(sftp_inbox, "land_file", lambda *a, **k: (_ for _ in ()).throw(OSError("lake down")))
    [first] = intake.take_all_requests()
    assert not intake.run(first, raise_on_error=False).success
    [second] = intake.tick()
    assert not intake.run(second, raise_on_error=False).success

    [quarantine] = intake.tick()

    assert quarantine.job_name == "sftp_quarantine"
    assert intake.run(quarantine).success
    reason = (intake.server.root / "quarantine" / f"{name}.reason.txt").read_text()
    assert reason.startswith(f"{name}: 2 intake runs did not take it (the last: run ")
    assert list(intake.inbox.iterdir()) == []


def test_a_stalled_upload_is_taken_only_once_complete(intake: Intake, tmp_path: Path):
    """A real upload through an SFTP handle that stays open: the file is listed while half-written, holds
    still for a while, then the partner's bytes go on."""
    data = _files(tmp_path)[0].path.read_bytes()
    name = CUSTOMERS.files.file_name("2025-11-03", 1, crc32_hex(data))
    start = time.time()
    clock = [start]
    sensor = build_inbox_sensor(intake.defs.resolve_all_job_defs(), clock=lambda: clock[0])
    windowed = SftpResource.from_settings(dataclasses.replace(settings.sftp(), stable_seconds=30))

    def tick(at: float) -> list[dg.RunRequest]:
        clock[0] = start + at
        return intake.tick(windowed, sensor=sensor)

    with SftpClient.from_settings(settings.sftp()) as partner:
        handle = partner._call("open", lambda sftp: sftp.open(f"inbox/{name}", "wb"))
        try:
            handle.write(data[: len(data) // 2])
            handle.flush()
            assert tick(0) == [] and tick(20) == [] and tick(29) == []  # the stall is shorter than the window
            handle.write(data[len(data) // 2 :])
            handle.flush()
        finally:
            handle.close()
    assert tick(35) == []  # it changed: the window starts again
    assert tick(60) == []
    [request] = tick(65)
    assert intake.run(request).success
    assert (intake.server.root / "archive" / name).read_bytes() == data
    assert list((intake.server.root / "quarantine").iterdir()) == []


def test_a_file_that_changes_after_it_was_found_complete_is_left_and_taken_whole_later(intake: Intake, tmp_path: Path):
    data = _files(tmp_path)[0].path.read_bytes()
    name = CUSTOMERS.files.file_name("2025-11-03", 1, crc32_hex(data))
    (intake.inbox / name).write_bytes(data[:100])  # stalled longer than the window
    [request] = intake.take_all_requests()
    with (intake.inbox / name).open("ab") as partner:  # and then went on, before the run
        partner.write(data[100:])

    run = intake.run(request)

    assert run.success
    assert (intake.inbox / name).read_bytes() == data  # not moved: it is not the file that was listed
    assert list((intake.server.root / "quarantine").iterdir()) == []
    metadata = run.asset_materializations_for_node("landing__customers")[0].metadata
    assert name in metadata["files_left_in_inbox"].value
    [again] = intake.take_all_requests()
    assert intake.run(again).success
    assert (intake.server.root / "archive" / name).read_bytes() == data


def test_a_reused_sequence_number_fails_the_check_and_gaps_are_reported(intake: Intake, tmp_path: Path):
    f = _files(tmp_path)[0]
    first = _put(intake, f.path.read_bytes(), sequence=1)
    third = _put(intake, customers_csv([customer(90)]).encode(), sequence=3)
    runs = intake.take_all()
    assert all(r.success for r in runs)
    gaps = {c.check_name: c for c in runs[-1].get_asset_check_evaluations()}["sequence_gaps"]
    assert not gaps.passed and gaps.severity == dg.AssetCheckSeverity.WARN
    assert gaps.metadata["missing_sequences"].value == [2]
    rows = len(intake.bronze())

    reused = _put(intake, customers_csv([customer(91)]).encode(), sequence=1)
    [run] = intake.take_all()

    [check] = [c for c in run.get_asset_check_evaluations() if c.check_name == "files_accepted"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert f"{reused}: sequence 00001 was delivered before as {first}" in check.description
    assert (
        "sequence 00001 was delivered before"
        in (intake.server.root / "quarantine" / f"{reused}.reason.txt").read_text()
    )
    assert len(intake.bronze()) == rows  # the day is not doubled
    assert third in intake.landed()


def test_a_file_naming_an_erased_customer_lands_without_it(intake: Intake, tmp_path: Path):
    """Erased before its file arrived: the intake run leaves the customer out of bronze and rewrites the landed
    copy (as `medallion erase` would have), everyone else loads, and the figures add up."""
    from dagster_project.lib.erasure import Subject, record_requests

    key = settings.pii_hmac_key().encode()
    record_requests(
        intake.lake,
        key,
        [Subject("email", "Erased.Person@Example.com")],
        request_id="r",
        requested_at=dt.datetime.now(dt.UTC),
    )
    name = _put(
        intake, customers_csv([customer(1), customer(2, email="erased.person@example.com"), customer(3)]).encode()
    )
    [run] = intake.take_all()
    assert run.success
    assert sorted(r["customer_id"] for r in intake.bronze()) == [1, 3]
    [bronze] = [
        m for m in run.get_asset_materialization_events() if m.asset_key == dg.AssetKey(["bronze", "customers"])
    ]
    assert bronze.materialization.metadata["received"].value == 2  # from the rewritten file
    [manifest] = landed_files(intake.lake, "customers", "2025-11-03")
    assert manifest.file_name == name and manifest.redactions[0]["records"] == 1
    landed = bytes(obstore.get(intake.lake.store, manifest.landed_path).bytes())
    assert b"erased.person" not in landed.lower() and landed.count(b"\n") == 3
