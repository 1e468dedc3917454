"""The readers read what landed where the lake is: a local folder, a restored copy of it, or an S3 bucket
(the loopback S3 server). The same landed input gives the same records wherever it lives."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from pathlib import Path

import obstore
import pytest
from deltalake import DeltaTable

from dagster_project import settings
from dagster_project.lib.bronze.engine import load_partition
from dagster_project.lib.bronze.readers.airbyte_records import AirbyteRecordsReader
from dagster_project.lib.bronze.readers.partner_files import PartnerFilesReader
from dagster_project.lib.intake.landing import land_file, landed_files, landed_key
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.naming import parse_file_name
from dagster_project.lib.sources.registry import CUSTOMERS, ORDERS
from dagster_project.samples.orders import land_sample_orders
from dagster_project.samples.partner_files import GeneratedFile, write_customer_files
from tests.lib.customer_files import RECEIVED_AT

DAYS = [dt.date(2025, 11, 5), dt.date(2025, 11, 6)]
VOLATILE = {"_ingested_at", "_run_id"}


def _land_customers(lake: Lake, folder: Path) -> list[GeneratedFile]:
    generated = write_customer_files(folder, DAYS, customers=60, changes_per_day=20, seed=5)
    for g in generated:
        staged = folder / "staged" / g.path.name
        staged.parent.mkdir(exist_ok=True)
        shutil.copyfile(g.path, staged)
        land_file(lake, parse_file_name(g.path.name), staged, source="sftp", source_uri="u", received_at=RECEIVED_AT)
    return generated


def _read(reader: PartnerFilesReader | AirbyteRecordsReader) -> list[dict]:
    return [row for _, batch in reader.read(batch_rows=50) for row in batch.to_pylist()]


def _s3(request: pytest.FixtureRequest) -> Lake:
    return Lake.parse(request.getfixturevalue("s3_lake"), settings.lake_storage_options())


def test_a_restored_copy_of_the_lake_rebuilds_a_partition_from_itself(tmp_path: Path) -> None:
    original = Lake.parse(str(tmp_path / "original"))
    truth = _land_customers(original, tmp_path / "generated")
    day = truth[0].business_date

    def rebuild(lake: Lake) -> list[dict]:
        load_partition(
            CUSTOMERS,
            PartnerFilesReader(CUSTOMERS, landed_files(lake, "customers", day), day, lake=lake),
            lake=lake,
            run_id="r",
        )
        rows = DeltaTable(lake.table("bronze", "customers")).to_pyarrow_table().to_pylist()
        return sorted(({k: v for k, v in r.items() if k not in VOLATILE} for r in rows), key=lambda r: r["_source_row"])

    before = rebuild(original)
    assert len(before) == truth[0].good
    shutil.copytree(original.root, tmp_path / "restored")
    shutil.rmtree(original.root)  # nothing may be read from where the lake used to be

    restored = Lake.parse(str(tmp_path / "restored"))
    assert rebuild(restored) == before


@pytest.mark.s3
def test_partner_files_on_s3_read_as_the_same_records_as_on_a_local_lake(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    local, s3 = Lake.parse(str(tmp_path / "lake")), _s3(request)
    truth = _land_customers(local, tmp_path / "a")
    _land_customers(s3, tmp_path / "b")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the reader's local copies go

    for g in truth:
        day = g.business_date
        from_s3 = _read(PartnerFilesReader(CUSTOMERS, landed_files(s3, "customers", day), day, lake=s3))
        from_local = _read(PartnerFilesReader(CUSTOMERS, landed_files(local, "customers", day), day, lake=local))
        assert from_s3 == from_local
        assert len(from_s3) == g.records
    assert list(scratch.iterdir()) == []  # each local copy is deleted once its file is read


@pytest.mark.s3
def test_a_landed_object_whose_bytes_changed_is_refused_when_read(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s3 = _s3(request)
    day = _land_customers(s3, tmp_path)[0].business_date
    [manifest] = landed_files(s3, "customers", day)
    obstore.put(s3.store, landed_key(s3, manifest), b"customer_id\n1\n")  # bypassing landing

    with pytest.raises(ValueError, match="the landed bytes changed"):
        _read(PartnerFilesReader(CUSTOMERS, [manifest], day, lake=s3))


@pytest.mark.s3
def test_airbyte_output_on_s3_reads_as_the_same_records_as_on_a_local_lake(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    local, s3 = Lake.parse(str(tmp_path / "lake")), _s3(request)
    days = [dt.date(2025, 11, 3), dt.date(2025, 11, 4)]
    landed = land_sample_orders(s3, days)
    assert land_sample_orders(local, days)["orders_by_date"] == landed["orders_by_date"]
    assert landed["directory"] == s3.uri("landing/shop_orders/orders")

    for day in days:
        from_s3 = AirbyteRecordsReader(ORDERS, s3, day.isoformat())
        from_local = AirbyteRecordsReader(ORDERS, local, day.isoformat())
        rows = _read(from_s3)
        assert rows == _read(from_local)
        assert from_s3.files_read == len(days)
        assert len({r["_checksum_sha256"] for r in rows}) >= 1
        good = [r for r in rows if r["_reasons"] is None]
        assert len(good) == landed["orders_by_date"][day.isoformat()]
