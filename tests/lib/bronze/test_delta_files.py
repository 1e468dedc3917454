"""The data files a load writes: committed with statistics that bound their rows, and deleted when the load
fails; a table whose columns are not the ones the load writes is refused."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandera.errors
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from dagster_project.lib.bronze import delta_files
from dagster_project.lib.bronze.contract import PARTITION_COLUMN
from dagster_project.lib.bronze.delta_files import TableSchemaMismatch, delta_stats
from dagster_project.lib.bronze.engine import load_partition
from dagster_project.lib.bronze.readers.partner_files import PartnerFilesReader
from dagster_project.lib.intake.landing import LandResult, landed_files
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.registry import CUSTOMERS
from tests.lib.customer_files import customer, customers_csv

Land = Callable[..., LandResult]
DAY = "2025-11-05"


def _load(landing_lake: Lake, **kwargs: Any) -> Any:
    def open_reader() -> Any:
        return nullcontext(
            PartnerFilesReader(CUSTOMERS, landed_files(landing_lake, "customers", DAY), DAY, lake=landing_lake)
        )

    kwargs.setdefault("run_id", "run-1")
    return load_partition(CUSTOMERS, open_reader, lake=landing_lake, business_date=DAY, **kwargs)


def _data_files(uri: str) -> set[str]:
    return {str(p.relative_to(uri)) for p in Path(uri).rglob("*.parquet")}


def _committed_files(uri: str) -> set[str]:
    return set(pa.table(DeltaTable(uri).get_add_actions(flatten=True)).column("path").to_pylist())


def test_committed_statistics_bound_every_column_the_table_keeps_them_for_and_no_personal_one(
    land: Land, landing_lake: Lake
) -> None:
    rows = [
        customer(i, lifetime_value=f"{i}.5{i % 10}", updated_at=f"2025-11-05T0{i % 10}:00:0{i % 7}.12{i % 10}Z")
        for i in range(1, 40)
    ]
    rows.append(customer(40, email="not-an-email", country_code=None, lifetime_value=None))
    land(customers_csv(rows))
    result = _load(landing_lake, batch_rows=16)  # several row groups
    assert (result.loaded, result.quarantined) == (39, 1)

    for layer in ("bronze", "quarantine"):
        uri = landing_lake.table(layer, "customers")
        table = DeltaTable(uri)
        data = table.to_pyarrow_table()
        configured = set(table.metadata().configuration["delta.dataSkippingStatsColumns"].split(","))
        [add] = pa.table(table.get_add_actions(flatten=True)).to_pylist()
        assert add["num_records"] == data.num_rows
        for field in data.schema:
            name = field.name
            if name == PARTITION_COLUMN or pa.types.is_list(field.type):
                continue
            if name not in configured:  # personal: neither the log nor the file's footer holds a value of it
                assert f"min.{name}" not in add
                footer = pq.ParquetFile(f"{uri}/{add['path']}").metadata
                column = footer.schema.names.index(name)
                assert all(footer.row_group(g).column(column).statistics is None for g in range(footer.num_row_groups))
                continue
            column = data.column(name)
            assert add[f"null_count.{name}"] == column.null_count
            if column.null_count < len(column):
                low, high = pc.min_max(column).values()
                assert (add[f"min.{name}"], add[f"max.{name}"]) == (low.as_py(), high.as_py()), name


def test_statistics_are_written_as_delta_rs_writes_them(tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    table = pa.table(
        {
            "d": pa.array([dt.date(2025, 1, 2), dt.date(2024, 12, 31)]),
            "t": pa.array(
                [dt.datetime(2025, 1, 2, 3, 4, 5, 120000), dt.datetime(2025, 1, 2, 3, 4, 5, 123456)],
                pa.timestamp("us", tz="UTC"),
            ),
            "w": pa.array([dt.datetime(2025, 1, 2, 3, 4, 5), None], pa.timestamp("us", tz="UTC")),
            "m": pa.array([Decimal("12.50"), Decimal("-0.25")], pa.decimal128(12, 2)),
            "s": pa.array(["b", "a"]),
            "n": pa.array([None, None], pa.int64()),
        }
    )
    pq.write_table(table, path)
    stats = delta_stats(pq.ParquetFile(path).metadata, {"d", "t", "w", "m", "s", "n"})
    assert stats == {
        "numRecords": 2,
        "minValues": {
            "d": "2024-12-31",
            "t": "2025-01-02T03:04:05.120Z",
            "w": "2025-01-02T03:04:05Z",
            "m": -0.25,
            "s": "a",
        },
        "maxValues": {
            "d": "2025-01-02",
            "t": "2025-01-02T03:04:05.123456Z",
            "w": "2025-01-02T03:04:05Z",
            "m": 12.5,
            "s": "b",
        },
        "nullCount": {"d": 0, "t": 0, "w": 1, "m": 0, "s": 0, "n": 2},
    }
    json.dumps(stats)  # what the log holds


class _FailingAfter:
    """A reader that hands over the batches of `inner` and then fails, as a reader does on a broken file."""

    def __init__(self, inner: PartnerFilesReader, batches: int):
        self.inner, self.batches = inner, batches
        self.business_date, self.origins = inner.business_date, inner.origins

    def read(self, batch_rows: int) -> Iterator[tuple[Any, pa.RecordBatch]]:
        for index, item in enumerate(self.inner.read(batch_rows)):
            if index == self.batches:
                raise OSError("the disk went away")
            yield item

    def details(self) -> dict[str, Any]:
        return self.inner.details()


def test_a_load_that_fails_leaves_no_data_file_behind(
    land: Land, landing_lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    land(customers_csv([customer(i) for i in range(1, 30)] + [customer(30, email="x")]))
    _load(landing_lake)
    uris = [landing_lake.table(layer, "customers") for layer in ("bronze", "quarantine")]
    before = {uri: _data_files(uri) for uri in uris}
    assert all(before[uri] == _committed_files(uri) for uri in uris)

    # Small files, so that the failing load has closed some before it fails.
    monkeypatch.setattr(delta_files, "TARGET_FILE_BYTES", 1)
    reader = _FailingAfter(
        PartnerFilesReader(CUSTOMERS, landed_files(landing_lake, "customers", DAY), DAY, lake=landing_lake), 3
    )
    with pytest.raises(OSError, match="the disk went away"):
        load_partition(CUSTOMERS, reader, lake=landing_lake, run_id="run-2", batch_rows=4)
    assert {uri: _data_files(uri) for uri in uris} == before

    nulling = _FailingAfter(
        PartnerFilesReader(CUSTOMERS, landed_files(landing_lake, "customers", DAY), DAY, lake=landing_lake), 99
    )

    def null_email(batch_rows: int) -> Iterator[tuple[Any, pa.RecordBatch]]:
        for index, (origin, batch) in enumerate(nulling.inner.read(batch_rows)):
            if index == 5:  # a reader bug only the typed contract catches, after some groups went to the encoder
                i = batch.schema.get_field_index("email")
                batch = batch.set_column(i, "email", pa.nulls(batch.num_rows, pa.string()))
            yield origin, batch

    nulling.read = null_email  # type: ignore[method-assign]
    with pytest.raises(pandera.errors.SchemaError, match="email"):
        load_partition(CUSTOMERS, nulling, lake=landing_lake, run_id="run-3", batch_rows=4)
    assert {uri: _data_files(uri) for uri in uris} == before


def test_a_table_with_other_columns_is_refused_and_nothing_is_committed(land: Land, landing_lake: Lake) -> None:
    uri = landing_lake.table("bronze", "customers")
    other = pa.schema([pa.field("customer_id", pa.int64()), pa.field(PARTITION_COLUMN, pa.date32())])
    DeltaTable.create(uri, other, partition_by=[PARTITION_COLUMN])
    land(customers_csv([customer(1)]))
    with pytest.raises(TableSchemaMismatch, match="bronze.customers: the table's columns"):
        _load(landing_lake)
    assert DeltaTable(uri).version() == 0
    assert DeltaTable(landing_lake.table("quarantine", "customers")).version() == 0  # created empty, never written


def test_the_encoder_thread_refuses_a_missing_required_value_and_the_error_reaches_the_load(tmp_path: Path) -> None:
    lake = Lake.parse(str(tmp_path / "lake"))
    uri = lake.table("bronze", "t")
    schema = pa.schema(
        [pa.field("id", pa.int64(), nullable=False), pa.field(PARTITION_COLUMN, pa.date32(), nullable=False)]
    )
    table = DeltaTable.create(uri, schema, partition_by=[PARTITION_COLUMN])
    files = delta_files.PartitionFiles(table, "bronze.t", uri, lake, schema, dt.date(2025, 11, 5))
    writer = delta_files.BackgroundWriter(files)
    file_schema = pa.schema([schema.field("id")])
    writer.put(pa.table({"id": [1, 2]}, schema=file_schema))
    writer.put(pa.table({"id": [3, None]}, schema=file_schema))
    with pytest.raises(ValueError, match="bronze.t: column id is declared not null"):
        writer.finish()
    files.discard()
    assert _data_files(uri) == set()
