"""The SFTP intake against a real SFTP server on loopback and a real Dagster instance, with the lake on a local
folder or on an S3 bucket (the loopback S3 server)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import dagster as dg
import obstore
import pytest
from deltalake import DeltaTable

from dagster_project import settings
from dagster_project.definitions import defs as load_defs
from dagster_project.defs.sftp.resources import SftpResource
from dagster_project.lib.checksums import crc32_hex
from dagster_project.lib.clients.sftp import HostKeyRefused
from dagster_project.lib.intake.landing import MANIFEST_SUFFIX, landed_files
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.registry import CUSTOMERS
from dagster_project.samples.partner_files import write_customer_files
from dagster_project.services.sftp_server import EmbeddedSftpServer
from tests.lib.customer_files import same_crc32

pytestmark = pytest.mark.sftp

DAYS = [dt.date(2025, 11, 3), dt.date(2025, 11, 4)]


class Intake:
    """Drives the inbox sensor and the intake runs the way the daemon would."""

    def __init__(self, server: EmbeddedSftpServer, lake: Lake):
        self.server = server
        self.inbox = server.root / "inbox"
        self.lake = lake
        self.defs = load_defs()
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursor: str | None = None

    def tick(self, resource: SftpResource | None = None) -> list[dg.RunRequest]:
        sensor = self.defs.resolve_sensor_def("sftp_inbox_sensor")
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            resources={"sftp": resource or SftpResource.from_settings(settings.sftp())},
        )
        result = sensor(context)
        self.cursor = result.cursor
        return list(result.run_requests or [])

    def take_all(self) -> list[dg.ExecuteInProcessResult]:
        """Two looks at the inbox (a file must hold still between them), then every requested run."""
        requests = self.tick() + self.tick()
        return [self.run(r) for r in requests]

    def run(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_job_def(request.job_name)
        return job.execute_in_process(
            instance=self.instance,
            partition_key=request.partition_key,
            run_config=request.run_config,
            tags=request.tags,
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


@pytest.mark.parametrize("intake", ["local", "s3"], indirect=True)
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


@pytest.mark.parametrize("intake", ["local", "s3"], indirect=True)
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


@pytest.mark.parametrize("intake", ["local", "s3"], indirect=True)
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


def test_broken_name_is_quarantined_with_its_reason(intake: Intake, tmp_path: Path):
    f = _files(tmp_path)[0]
    (intake.inbox / "acme_customers_latest.csv").write_bytes(f.path.read_bytes())

    assert intake.tick() == []

    quarantine = intake.server.root / "quarantine"
    assert (quarantine / "acme_customers_latest.csv").exists()
    reason = (quarantine / "acme_customers_latest.csv.reason.txt").read_text()
    assert "acme_customers_latest.csv" in reason and "naming contract" in reason
    assert list(intake.inbox.iterdir()) == []


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
