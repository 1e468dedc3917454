"""The bronze hop: a partition is a pure function of the files landed for its date, and nothing is lost."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandera.errors
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from dagster_project.lib.bronze import engine
from dagster_project.lib.bronze.contract import ContractError, bronze_schema
from dagster_project.lib.bronze.engine import LoadResult, load_partition
from dagster_project.lib.bronze.readers.partner_files import PartnerFilesReader
from dagster_project.lib.intake.landing import LandResult, land_file, landed_files, landed_key
from dagster_project.lib.lake import Lake as LandingLake
from dagster_project.lib.sources.naming import parse_file_name
from dagster_project.lib.sources.registry import CUSTOMERS
from dagster_project.lib.sources.spec import OnSchemaDrift, SourceSpec
from dagster_project.samples.partner_files import GeneratedFile, write_customer_files
from tests.lib.customer_files import RECEIVED_AT, customer, customers_csv

Land = Callable[..., LandResult]
DAY = "2025-11-05"
SAMPLE_DAYS = [dt.date(2025, 11, 5), dt.date(2025, 11, 6), dt.date(2025, 11, 7)]
INGESTED_AT = dt.datetime(2025, 11, 5, 8, 0, tzinfo=dt.UTC)
VOLATILE = {"_ingested_at", "_run_id"}


@dataclasses.dataclass
class Lake:
    """Files landed on `landing`; the bronze and quarantine tables on `tables` (the same lake unless a test
    wants a second set of tables over the same landed files)."""

    landing: LandingLake
    tables: LandingLake

    @property
    def bronze(self) -> str:
        return self.tables.table("bronze", "customers")

    @property
    def quarantine(self) -> str:
        return self.tables.table("quarantine", "customers")

    def load(self, business_date: str = DAY, *, spec: SourceSpec = CUSTOMERS, **kwargs: Any) -> LoadResult:
        kwargs.setdefault("run_id", "run-1")
        kwargs.setdefault("ingested_at", INGESTED_AT)
        manifests = kwargs.pop("manifests", None)

        def open_reader() -> AbstractContextManager[PartnerFilesReader]:
            listed = landed_files(self.landing, spec.name, business_date) if manifests is None else manifests
            return nullcontext(PartnerFilesReader(spec, listed, business_date, lake=self.landing))

        return load_partition(spec, open_reader, lake=self.tables, business_date=business_date, **kwargs)

    def bronze_rows(self, business_date: str | None = None) -> list[dict[str, Any]]:
        return _rows(self.bronze, business_date)

    def quarantine_rows(self, business_date: str | None = None) -> list[dict[str, Any]]:
        return _rows(self.quarantine, business_date)


def _rows(path: str, business_date: str | None) -> list[dict[str, Any]]:
    table = DeltaTable(path).to_pyarrow_table()
    rows = table.sort_by([("_source_file", "ascending"), ("_source_row", "ascending")]).to_pylist()
    if business_date is None:
        return rows
    return [r for r in rows if r["business_date"] == dt.date.fromisoformat(business_date)]


def _without(rows: list[dict[str, Any]], columns: set[str]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in columns} for r in rows]


@pytest.fixture
def lake(tmp_path: Path, landing_lake: LandingLake) -> Lake:
    return Lake(landing_lake, landing_lake)


def _land_generated(lake: Lake, generated: list[GeneratedFile]) -> None:
    for g in generated:
        parsed = parse_file_name(g.path.name)
        land_file(lake.landing, parsed, g.path, source="sftp", source_uri="sftp://x", received_at=RECEIVED_AT)


Sample = tuple[Lake, list[GeneratedFile], dict[str, LoadResult]]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    """Three days of generated partner files, landed and loaded once; read-only for the tests that use it."""
    root = tmp_path_factory.mktemp("sample")
    lake = Lake(LandingLake.parse(str(root)), LandingLake.parse(str(root)))
    generated = write_customer_files(root / "generated", SAMPLE_DAYS, customers=60, changes_per_day=40, seed=11)
    _land_generated(lake, generated)  # moves the files; each GeneratedFile keeps its name and its truth
    loads = {g.business_date: lake.load(g.business_date) for g in generated}
    return lake, generated, loads


# --- nothing lost, nothing invented ------------------------------------------------------------------------


def test_generated_files_received_equals_loaded_plus_quarantined_and_the_truth(sample: Sample) -> None:
    lake, truth, loads = sample
    for g in truth:
        [file_load] = loads[g.business_date].origins
        assert file_load.origin == g.path.name
        assert (file_load.loaded, file_load.quarantined) == (g.good, g.bad)
        assert file_load.received == g.records
        assert file_load.reasons == Counter(g.reasons)


def test_generated_partitions_hold_exactly_the_good_and_bad_rows(sample: Sample) -> None:
    lake, truth, _ = sample
    for g in truth:
        assert len(lake.bronze_rows(g.business_date)) == g.good
        quarantined = lake.quarantine_rows(g.business_date)
        assert len(quarantined) == g.bad
        assert Counter(r for row in quarantined for r in row["_reasons"]) == Counter(g.reasons)


def test_bronze_schema_equals_the_contract_schema(sample: Sample) -> None:
    lake, _, _ = sample
    table = DeltaTable(lake.bronze)
    assert pa.schema(table.schema().to_arrow()) == bronze_schema(CUSTOMERS)
    assert table.metadata().partition_columns == ["business_date"]


def test_file_with_a_bom_loads_its_first_record(sample: Sample) -> None:
    lake, truth, _ = sample
    [manifest] = landed_files(lake.landing, "customers", truth[0].business_date)
    landed = Path(lake.landing.uri(landed_key(lake.landing, manifest)))
    assert landed.read_bytes().startswith(b"\xef\xbb\xbfcustomer_id,")
    first = lake.bronze_rows(truth[0].business_date)[0]
    assert (first["_source_row"], first["customer_id"]) == (1, 1)


def test_quoted_field_with_newline_and_comma_survives_in_a_crlf_file(sample: Sample) -> None:
    lake, truth, _ = sample
    day2 = lake.bronze_rows(truth[1].business_date)  # written with CRLF line ends
    assert [r["_source_row"] for r in day2 if r["last_name"] == "Smith,\nJr."] == [2]


# --- hand-written files -----------------------------------------------------------------------------------


def test_lineage_columns_describe_the_source_file(land: Land, lake: Lake) -> None:
    landed = land(customers_csv([customer(1), customer(2)]))
    lake.load(run_id="run-42")
    rows = lake.bronze_rows()
    assert [r["_source_row"] for r in rows] == [1, 2]
    assert {
        (
            r["business_date"],
            r["_source"],
            r["_source_file"],
            r["_checksum_sha256"],
            r["_schema_version"],
            r["_received_at"],
            r["_ingested_at"],
            r["_run_id"],
        )
        for r in rows
    } == {
        (
            dt.date(2025, 11, 5),
            "sftp",
            landed.manifest.file_name,
            landed.manifest.sha256,
            1,
            RECEIVED_AT,
            INGESTED_AT,
            "run-42",
        )
    }


def test_values_are_typed(land: Land, lake: Lake) -> None:
    land(customers_csv([customer(7, lifetime_value="1234.5", updated_at="2025-11-05T08:00:00+02:00")]))
    lake.load()
    [row] = lake.bronze_rows()
    assert {k: row[k] for k in CUSTOMERS.column_names} == {
        "customer_id": 7,
        "email": "ada.lovelace7@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "country_code": "GB",
        "signup_date": dt.date(2025, 1, 5),
        "lifetime_value": Decimal("1234.50"),
        "status": "active",
        "updated_at": dt.datetime(2025, 11, 5, 6, 0, tzinfo=dt.UTC),
    }


def test_bom_crlf_and_embedded_newline_and_comma_survive(land: Land, lake: Lake) -> None:
    text = customers_csv(
        [customer(1, last_name="Smith,\r\nJr."), customer(2, first_name='Renée "Ren"'), customer(3)], newline="\r\n"
    )
    land(b"\xef\xbb\xbf" + text.encode())
    result = lake.load()
    assert (result.loaded, result.quarantined) == (3, 0)
    assert [(r["customer_id"], r["first_name"], r["last_name"]) for r in lake.bronze_rows()] == [
        (1, "Ada", "Smith,\r\nJr."),
        (2, 'Renée "Ren"', "Lovelace"),
        (3, "Ada", "Lovelace"),
    ]


def test_header_only_file_loads_zero_rows(land: Land, lake: Lake) -> None:
    land(customers_csv([]))
    result = lake.load()
    assert (result.received, result.loaded, result.quarantined) == (0, 0, 0)
    assert lake.bronze_rows() == []


def test_malformed_line_is_quarantined_with_its_line_number_and_text(land: Land, lake: Lake) -> None:
    bad = "9,too,many,columns,a,b,c,d,e,f,g"
    text = customers_csv([customer(1), customer(2)]) + bad + "\n"
    landed = land(text)
    result = lake.load()
    assert (result.loaded, result.quarantined) == (2, 1)
    [row] = lake.quarantine_rows()
    assert row["_source_file"] == landed.manifest.file_name
    assert row["_source_line"] == 4  # header, two records, then this line
    assert row["_source_row"] is None
    assert row["_raw_record"] == bad
    assert row["_reasons"] == ["malformed CSV line: too many columns"]


def test_line_with_too_few_columns_is_quarantined(land: Land, lake: Lake) -> None:
    land(customers_csv([customer(1)]) + "9,too,few\n")
    result = lake.load()
    assert result.reasons == Counter({"malformed CSV line: missing columns": 1})
    assert [(r["_source_line"], r["_raw_record"]) for r in lake.quarantine_rows()] == [(3, "9,too,few")]


def test_quarantine_row_carries_file_record_raw_text_and_every_reason(land: Land, lake: Lake) -> None:
    landed = land(customers_csv([customer(1), customer(2, email="n/a", status="deleted"), customer(3)]))
    result = lake.load()
    assert (result.loaded, result.quarantined) == (2, 1)
    [row] = lake.quarantine_rows()
    assert {k: row[k] for k in ("_source_file", "_source_row", "_source_line", "_raw_record", "_reasons")} == {
        "_source_file": landed.manifest.file_name,
        "_source_row": 2,
        "_source_line": None,
        "_raw_record": "2,n/a,Ada,Lovelace,GB,2025-01-05,10.50,deleted,2025-11-05T06:00:00Z",
        "_reasons": ["email: does not match the expected pattern", "status: not one of active, inactive, closed"],
    }
    assert (row["_checksum_sha256"], row["_received_at"], row["_run_id"]) == (
        landed.manifest.sha256,
        RECEIVED_AT,
        "run-1",
    )
    assert [r["_source_row"] for r in lake.bronze_rows()] == [1, 3]


def test_re_running_a_partition_gives_the_same_rows_and_no_duplicates(land: Land, lake: Lake) -> None:
    land(customers_csv([customer(i) for i in range(1, 21)] + [customer(21, status="gone")]))
    lake.load(run_id="run-1", ingested_at=INGESTED_AT)
    first_bronze, first_quarantine = lake.bronze_rows(), lake.quarantine_rows()
    lake.load(run_id="run-2", ingested_at=INGESTED_AT + dt.timedelta(hours=1))
    second_bronze, second_quarantine = lake.bronze_rows(), lake.quarantine_rows()
    assert len(second_bronze) == 20
    assert len(second_quarantine) == 1
    assert _without(second_bronze, VOLATILE) == _without(first_bronze, VOLATILE)
    assert _without(second_quarantine, VOLATILE) == _without(first_quarantine, VOLATILE)
    assert {r["_run_id"] for r in second_bronze + second_quarantine} == {"run-2"}


def test_two_files_on_the_same_date_both_land_in_the_partition(land: Land, lake: Lake) -> None:
    first = land(customers_csv([customer(1), customer(2)]), sequence=1)
    second = land(customers_csv([customer(3), customer(4, status="x"), customer(5)]), sequence=2)
    result = lake.load()
    assert [(f.origin, f.loaded, f.quarantined) for f in result.origins] == [
        (first.manifest.file_name, 2, 0),
        (second.manifest.file_name, 2, 1),
    ]
    assert [(r["_source_file"], r["_source_row"], r["customer_id"]) for r in lake.bronze_rows()] == [
        (first.manifest.file_name, 1, 1),
        (first.manifest.file_name, 2, 2),
        (second.manifest.file_name, 1, 3),
        (second.manifest.file_name, 3, 5),
    ]


def test_partition_without_manifests_is_emptied_and_others_are_untouched(land: Land, lake: Lake) -> None:
    land(customers_csv([customer(1), customer(2, status="x")]), business_date="2025-11-05")
    land(customers_csv([customer(3), customer(4, status="x")]), business_date="2025-11-06")
    lake.load("2025-11-05")
    lake.load("2025-11-06")
    other_bronze, other_quarantine = lake.bronze_rows("2025-11-06"), lake.quarantine_rows("2025-11-06")

    result = lake.load("2025-11-05", manifests=[])
    assert result.origins == []
    assert lake.bronze_rows("2025-11-05") == []
    assert lake.quarantine_rows("2025-11-05") == []
    assert lake.bronze_rows("2025-11-06") == other_bronze
    assert lake.quarantine_rows("2025-11-06") == other_quarantine
    assert [r["customer_id"] for r in other_bronze] == [3]


def test_reloading_a_partition_leaves_other_partitions_untouched(land: Land, lake: Lake) -> None:
    land(customers_csv([customer(1)]), business_date="2025-11-05")
    land(customers_csv([customer(2)]), business_date="2025-11-06")
    lake.load("2025-11-05", run_id="a")
    lake.load("2025-11-06", run_id="b")
    lake.load("2025-11-05", run_id="c")
    assert [(r["customer_id"], r["_run_id"]) for r in lake.bronze_rows()] == [(1, "c"), (2, "b")]


def test_small_batches_give_the_same_result_as_one_big_batch(land: Land, lake: Lake, tmp_path: Path) -> None:
    rows = [customer(i, status="bad") if i % 9 == 0 else customer(i) for i in range(1, 51)]
    land(customers_csv(rows[:23]) + "1,malformed\n", sequence=1)
    land(customers_csv(rows[23:]), sequence=2)
    big = lake.load(batch_rows=1_000_000)
    big_bronze, big_quarantine = lake.bronze_rows(), lake.quarantine_rows()

    small_lake = Lake(lake.landing, LandingLake.parse(str(tmp_path / "small")))
    small = small_lake.load(batch_rows=7)
    assert [(f.loaded, f.quarantined, f.reasons) for f in small.origins] == [
        (f.loaded, f.quarantined, f.reasons) for f in big.origins
    ]
    assert small_lake.bronze_rows() == big_bronze
    assert small_lake.quarantine_rows() == big_quarantine
    assert len(big_bronze) == 45


def test_record_numbers_are_continuous_across_batches(land: Land, lake: Lake) -> None:
    rows = [customer(i, status="bad") if i % 4 == 0 else customer(i) for i in range(1, 31)]
    landed = land(customers_csv(rows))
    lake.load(batch_rows=7)
    good = [r["_source_row"] for r in lake.bronze_rows()]
    bad = [r["_source_row"] for r in lake.quarantine_rows()]
    assert sorted(good + bad) == list(range(1, 31))
    assert bad == [4, 8, 12, 16, 20, 24, 28]
    assert all(r["customer_id"] == r["_source_row"] for r in lake.bronze_rows())
    assert {r["_source_file"] for r in lake.bronze_rows()} == {landed.manifest.file_name}


def test_failure_in_a_later_file_leaves_the_partition_unchanged(land: Land, lake: Lake) -> None:
    land(customers_csv([customer(i) for i in range(1, 30)] + [customer(30, status="x")]), sequence=1)
    lake.load(run_id="before")
    bronze_version, quarantine_version = DeltaTable(lake.bronze).version(), DeltaTable(lake.quarantine).version()
    before_bronze, before_quarantine = lake.bronze_rows(), lake.quarantine_rows()

    # the first file streams several batches into the writer before the second one fails on its header
    header = [*CUSTOMERS.column_names, "nickname"]
    bad = land(customers_csv([customer(i, nickname="n") for i in range(100, 120)], header=header), sequence=2)
    with pytest.raises(ContractError) as err:
        lake.load(run_id="after", batch_rows=7)
    assert str(err.value).startswith(f"{bad.manifest.file_name}: unknown column(s) nickname;")
    assert DeltaTable(lake.bronze).version() == bronze_version
    assert DeltaTable(lake.quarantine).version() == quarantine_version
    assert lake.bronze_rows() == before_bronze
    assert lake.quarantine_rows() == before_quarantine


class _NullingReader:
    """Hands the engine every record as the partner-file reader does, but from batch `at` on with `email`
    null and no reason: a reader bug that only the typed contract of the committed batches can catch."""

    def __init__(self, inner: PartnerFilesReader, at: int):
        self.inner, self.at = inner, at
        self.business_date, self.origins = inner.business_date, inner.origins

    def read(self, batch_rows: int) -> Iterator[tuple[Any, pa.RecordBatch]]:
        for index, (origin, batch) in enumerate(self.inner.read(batch_rows)):
            if index >= self.at:
                columns = [
                    pa.nulls(batch.num_rows, pa.string()) if n == "email" else batch.column(n)
                    for n in batch.schema.names
                ]
                batch = pa.RecordBatch.from_arrays(columns, names=batch.schema.names)
            yield origin, batch

    def details(self) -> dict[str, Any]:
        return self.inner.details()


def test_batch_breaking_the_typed_contract_is_not_committed(land: Land, lake: Lake) -> None:
    land(customers_csv([customer(i) for i in range(1, 30)]), sequence=1)
    lake.load(run_id="before")
    bronze_version, before = DeltaTable(lake.bronze).version(), lake.bronze_rows()

    manifests = landed_files(lake.landing, "customers", DAY)
    reader = _NullingReader(PartnerFilesReader(CUSTOMERS, manifests, DAY, lake=lake.landing), at=2)
    with pytest.raises(pandera.errors.SchemaError, match="email"):
        load_partition(CUSTOMERS, reader, lake=lake.tables, run_id="after", batch_rows=7)
    assert DeltaTable(lake.bronze).version() == bronze_version
    assert lake.bronze_rows() == before


def test_manifest_of_another_date_is_refused(land: Land, lake: Lake) -> None:
    landed = land(customers_csv([customer(1)]), business_date="2025-11-06")
    with pytest.raises(ValueError, match=f"{landed.manifest.file_name}: belongs to 2025-11-06, not 2025-11-05"):
        lake.load("2025-11-05", manifests=[landed.manifest])
    assert lake.bronze_rows() == lake.quarantine_rows() == []


def test_ignored_drift_drops_unknown_and_nulls_missing_columns(land: Land, lake: Lake) -> None:
    spec = dataclasses.replace(
        CUSTOMERS, on_unknown_column=OnSchemaDrift.IGNORE, on_missing_column=OnSchemaDrift.IGNORE
    )
    header = [c for c in CUSTOMERS.column_names if c != "country_code"] + ["nickname"]
    land(customers_csv([customer(1, nickname="x"), customer(2, nickname="y", status="gone")], header=header))
    result = lake.load(spec=spec)
    assert (result.loaded, result.quarantined) == (1, 1)
    [row] = lake.bronze_rows()
    assert (row["customer_id"], row["country_code"]) == (1, None)
    assert "nickname" not in row
    assert lake.quarantine_rows()[0]["_raw_record"] == (
        "2,ada.lovelace2@example.com,Ada,Lovelace,2025-01-05,10.50,gone,2025-11-05T06:00:00Z"
    )


@pytest.fixture
def new_york_time() -> Iterator[None]:
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TZ")
        else:
            os.environ["TZ"] = before
        time.tzset()


@pytest.mark.usefixtures("new_york_time")
def test_naive_timestamps_are_utc_whatever_the_machine_time_zone(land: Land, lake: Lake) -> None:
    land(
        customers_csv(
            [customer(1, updated_at="2025-11-05T06:00:00"), customer(2, updated_at="2025-11-05T08:00:00+02:00")]
        )
    )
    lake.load()
    assert [r["updated_at"] for r in lake.bronze_rows()] == [
        dt.datetime(2025, 11, 5, 6, 0, tzinfo=dt.UTC),
        dt.datetime(2025, 11, 5, 6, 0, tzinfo=dt.UTC),
    ]


def test_record_numbers_count_readable_records_and_malformed_lines_keep_their_line(land: Land, lake: Lake) -> None:
    # `_source_row` is the ordinal among records the parser could read; a malformed line is quarantined
    # with its own line number (header = line 1) and does not take a record number.
    land(customers_csv([customer(1)]) + "9,too,few\n" + customers_csv([customer(3)]).split("\n", 1)[1])
    lake.load()
    assert [(r["customer_id"], r["_source_row"]) for r in lake.bronze_rows()] == [(1, 1), (3, 2)]
    [rejected] = lake.quarantine_rows()
    assert (rejected["_source_row"], rejected["_source_line"], rejected["_raw_record"]) == (None, 3, "9,too,few")


@pytest.mark.parametrize(
    "bad_rows",
    [[], [0], [9], [3, 4, 5], [0, 2, 9], list(range(10))],
    ids=["none", "first", "last", "a run", "scattered", "all"],
)
def test_the_good_rows_of_a_batch_are_kept_in_order_whatever_the_bad_ones(bad_rows: list[int]) -> None:
    table = pa.table({"id": list(range(10)), "name": [f"n{i}" for i in range(10)]})
    bad = pa.array([i in bad_rows for i in range(10)])

    kept = engine._without(table, bad)

    assert kept.to_pylist() == [row for i, row in enumerate(table.to_pylist()) if i not in bad_rows]
    assert kept.schema == table.schema


def test_many_bad_rows_are_dropped_with_one_copy_instead_of_slices() -> None:
    n = 3 * engine.MAX_SLICED_OUT
    table = pa.table({"id": list(range(n))})
    bad = pa.array([i % 2 == 0 for i in range(n)])

    kept = engine._without(table, bad)

    assert kept.column("id").to_pylist() == list(range(1, n, 2))
    assert kept.column("id").num_chunks == 1
