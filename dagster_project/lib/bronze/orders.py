"""The bronze hop for shop orders: what the Airbyte destination wrote into landing -> typed Delta partition.

The destination writes every sync's records as JSON Lines under `<landing>/shop_orders/orders/`
(`airbyte_records` reads that format). A bronze partition holds the orders whose `order_date` is its
date, and it is rebuilt from every record landed so far, then replaced in one Delta commit (`predicate`
overwrite): a re-run or a backfill yields the same rows and never duplicates.

Airbyte delivers at least once, and a later delivery of an order carries its newer state (a status that
moved on). So records are first deduplicated on `order_id` across all of landing, keeping the latest
`_airbyte_extracted_at` (then the highest generation, then the last delivered, as
`airbyte_records.deduplicate_latest` does); the surviving record decides the order's partition and is
then checked against the edge contract (`ORDERS`, compiled by `contract.select_sql` like the file feeds).
A surviving record that breaks the contract is quarantined with every reason, and its older deliveries
count as duplicates: bronze never silently keeps a stale state of an order whose current state is bad.
A record with no usable `order_date` (or no `order_id`) belongs to the UTC date it was extracted on.
Per partition: received = loaded + quarantined + duplicates_dropped.

Records stream from the files into DuckDB in batches, and out of it into the Delta writer in batches;
DuckDB holds the working set and spills to disk beyond its memory limit.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandera.polars as pa_pl
import polars as pl
import pyarrow as pa

from dagster_project.lib.bronze.airbyte_records import (
    EXTRACTED_AT,
    GENERATION_ID,
    META,
    RAW_ID,
    SHOP_ORDERS_SCHEMA,
    SOURCE_FILE,
    SOURCE_ROW,
    read_airbyte_records,
    record_files,
    record_schema,
)
from dagster_project.lib.bronze.contract import (
    PARTITION_COLUMN,
    QUARANTINE_SCHEMA,
    bronze_schema,
    pandera_schema,
    select_sql,
)
from dagster_project.lib.bronze.engine import replace_partition
from dagster_project.lib.checksums import digest_file
from dagster_project.lib.sources.registry import Column, FeedSpec

TABLE = "orders"
LANDING_DIR = "shop_orders"  # the destination's folder under the lake's landing root
STREAM = "orders"  # the stream's folder inside it
SOURCE = "airbyte:shop/orders"
DEFAULT_BATCH_ROWS = 64 * 1024

ORDERS = FeedSpec(
    name=TABLE,
    system="shop",
    entity="orders",
    description="Shop orders synced by Airbyte, one row per order (its latest delivered state).",
    schema_version=1,
    key=("order_id",),
    owners=("team:commerce-data",),
    columns=(
        Column("order_id", "int64", nullable=False, min_value=1, description="Shop order id"),
        Column("customer_id", "int64", min_value=1, description="CRM customer id; null for a guest order"),
        Column("order_date", "date", nullable=False, description="Business date of the order (shop time zone)"),
        Column("ordered_at", "timestamp", nullable=False, description="When the order was placed, ISO 8601"),
        Column("total_amount", "decimal", nullable=False, precision=12, scale=2, min_value=0),
        Column("currency", "string", nullable=False, pattern=r"^[A-Z]{3}$", description="ISO 4217, upper case"),
        Column("status", "string", nullable=False, allowed=("placed", "paid", "shipped", "cancelled")),
    ),
)

# What the destination may write: the stream schema, with the key nullable so that a record without one
# reaches the contract (and quarantine) instead of failing the whole read.
EDGE_SCHEMA = SHOP_ORDERS_SCHEMA.set(
    SHOP_ORDERS_SCHEMA.get_field_index("order_id"), SHOP_ORDERS_SCHEMA.field("order_id").with_nullable(True)
)

_AIRBYTE_BRONZE_FIELDS = (
    pa.field(RAW_ID, pa.string(), nullable=False),
    pa.field(EXTRACTED_AT, pa.timestamp("us", tz="UTC"), nullable=False),
)
BRONZE_SCHEMA = pa.schema([*bronze_schema(ORDERS), *_AIRBYTE_BRONZE_FIELDS])

_EPOCH_MS_IN_NAME = re.compile(r"^\d{4}_\d{2}_\d{2}_(\d{13})_")


def landing_dir(landing_root: Path) -> Path:
    """Where the destination writes the orders stream."""
    return landing_root / LANDING_DIR / STREAM


def pandera_contract() -> pa_pl.DataFrameSchema:
    """The typed contract of a bronze batch: the feed's columns and lineage, the Airbyte record id and
    extraction time, each order once."""
    base = pandera_schema(ORDERS)
    columns = dict(base.columns)
    columns["order_id"] = pa_pl.Column(pl.Int64, nullable=False, unique=True)
    columns[RAW_ID] = pa_pl.Column(pl.String, nullable=False)
    columns[EXTRACTED_AT] = pa_pl.Column(pl.Datetime("us", "UTC"), nullable=False)
    return pa_pl.DataFrameSchema(columns, strict=True, ordered=True, name=f"bronze.{TABLE}")


@dataclass
class OrdersLoad:
    business_date: str
    loaded: int = 0
    quarantined: int = 0
    duplicates_dropped: int = 0
    files: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def received(self) -> int:
        return self.loaded + self.quarantined + self.duplicates_dropped


@dataclass(frozen=True)
class _LandedFile:
    relative: str
    sha256: str
    received_at: dt.datetime


def _landed_files(directory: Path) -> list[_LandedFile]:
    files = []
    for path in record_files(directory):
        match = _EPOCH_MS_IN_NAME.match(path.name)
        # The destination names a file after its sync's start; the file's time stands in when it does not.
        epoch = int(match.group(1)) / 1000 if match else path.stat().st_mtime
        files.append(
            _LandedFile(
                relative=path.relative_to(directory).as_posix(),
                sha256=digest_file(path).sha256,
                received_at=dt.datetime.fromtimestamp(epoch, dt.UTC),
            )
        )
    return files


def _stage(con: duckdb.DuckDBPyConnection, directory: Path, batch_rows: int) -> None:
    """Create `checked`: every landed record with its typed columns, reasons, group and partition."""
    schema = record_schema(EDGE_SCHEMA)
    reader = pa.RecordBatchReader.from_batches(
        schema, read_airbyte_records(directory, EDGE_SCHEMA, batch_size=batch_rows)
    )
    con.register("landed_reader", reader)
    con.execute("CREATE TABLE records AS SELECT * FROM landed_reader")
    con.unregister("landed_reader")
    data = [f.name for f in EDGE_SCHEMA]
    as_text = ", ".join(f'CAST("{name}" AS VARCHAR) AS "{name}"' for name in data)
    raw_json = "to_json({" + ", ".join(f"'{name}': \"{name}\"" for name in [RAW_ID, *data]) + "})"
    con.execute(
        f"""
        CREATE VIEW staged AS
        SELECT {as_text},
               {raw_json} AS _raw_json,
               -- values Airbyte nulled or truncated on the way are not the source's data
               list_transform(
                   coalesce({META}.changes, []),
                   lambda c: coalesce(c.field, '?') || ': ' || lower(coalesce(c.change, 'changed')) || ' by Airbyte'
                        || coalesce(' (' || c.reason || ')', '')
               ) AS _airbyte_changes,
               {RAW_ID}, {EXTRACTED_AT}, {GENERATION_ID}, {SOURCE_FILE}, {SOURCE_ROW}
        FROM records
        """
    )
    passthrough = ["_raw_json", "_airbyte_changes", RAW_ID, EXTRACTED_AT, GENERATION_ID, SOURCE_FILE, SOURCE_ROW]
    contract = select_sql(ORDERS, data, source="staged", passthrough=passthrough)
    con.execute(
        f"""
        CREATE TABLE checked AS
        WITH typed AS ({contract}),
        ranked AS (
            SELECT *,
                   CASE WHEN order_id IS NULL THEN NULL ELSE row_number() OVER (
                       PARTITION BY order_id
                       ORDER BY {EXTRACTED_AT} DESC, {GENERATION_ID} DESC NULLS LAST,
                                {SOURCE_FILE} DESC, {SOURCE_ROW} DESC
                   ) END AS _rank
            FROM typed
        ),
        winners AS (
            SELECT order_id,
                   coalesce(order_date, CAST(timezone('UTC', {EXTRACTED_AT}) AS DATE)) AS _partition
            FROM ranked WHERE _rank = 1
        )
        SELECT ranked.*,
               coalesce(
                   winners._partition,
                   ranked.order_date,
                   CAST(timezone('UTC', ranked.{EXTRACTED_AT}) AS DATE)
               ) AS {PARTITION_COLUMN},
               coalesce(ranked._rank, 1) > 1 AS _is_duplicate,
               list_concat(coalesce(ranked._reasons, []), ranked._airbyte_changes) AS _all_reasons
        FROM ranked LEFT JOIN winners ON ranked.order_id = winners.order_id
        """
    )


def load_orders_partition(
    landing_root: Path,
    *,
    business_date: str,
    bronze_path: Path,
    quarantine_path: Path,
    run_id: str,
    ingested_at: dt.datetime | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> OrdersLoad:
    """Replace the bronze (and quarantine) partition of `business_date` from every landed orders record."""
    day = dt.date.fromisoformat(business_date)
    ingested_at = ingested_at or dt.datetime.now(dt.UTC)
    directory = landing_dir(landing_root)
    files = {f.relative: f for f in _landed_files(directory)} if directory.exists() else {}
    result = OrdersLoad(business_date=business_date, files=len(files))

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        if files:
            _stage(con, directory, batch_rows)
        else:
            con.execute(
                f"CREATE TABLE checked AS SELECT NULL::DATE AS {PARTITION_COLUMN}, false AS _is_duplicate WHERE false"
            )
        (result.duplicates_dropped,) = con.sql(
            f"SELECT count(*) FROM checked WHERE {PARTITION_COLUMN} = ? AND _is_duplicate", params=[day]
        ).fetchall()[0]

        lineage = _LineageColumns(files, ingested_at, run_id, day)
        good: pa.RecordBatchReader | None = None
        bad: pa.Table | None = None
        if files:
            # Quarantined rows first, materialized: a second query on the connection would end a stream.
            bad = con.sql(
                f"""
                SELECT {SOURCE_FILE}, {SOURCE_ROW}, _raw_json, _all_reasons
                FROM checked
                WHERE {PARTITION_COLUMN} = ? AND NOT _is_duplicate AND len(_all_reasons) > 0
                ORDER BY {SOURCE_FILE}, {SOURCE_ROW}
                """,
                params=[day],
            ).to_arrow_table()
            good = con.sql(
                f"""
                SELECT {", ".join(ORDERS.column_names)}, {RAW_ID}, {EXTRACTED_AT}, {SOURCE_FILE}, {SOURCE_ROW}
                FROM checked
                WHERE {PARTITION_COLUMN} = ? AND NOT _is_duplicate AND len(_all_reasons) = 0
                ORDER BY order_id
                """,
                params=[day],
            ).to_arrow_reader(batch_rows)

        contract = pandera_contract()

        def bronze_batches() -> Iterator[pa.RecordBatch]:
            if good is None:
                return
            for batch in good:
                if batch.num_rows:
                    out = lineage.bronze_batch(batch)
                    contract.validate(pl.from_arrow(out))
                    result.loaded += out.num_rows
                    yield out

        replace_partition(bronze_path, BRONZE_SCHEMA, bronze_batches(), day, description=ORDERS.description)
        quarantined = lineage.quarantine_table(bad) if bad is not None else QUARANTINE_SCHEMA.empty_table()
        result.quarantined = quarantined.num_rows
        for reasons in quarantined.column("_reasons").to_pylist():
            result.reasons.update(reasons)
        replace_partition(
            quarantine_path,
            quarantined.schema,
            quarantined.to_batches(),
            day,
            description="Shop order records that broke the orders contract, with every reason.",
        )
    finally:
        con.close()
    return result


class _LineageColumns:
    """Lineage of a record from the landed file it came from."""

    def __init__(self, files: dict[str, _LandedFile], ingested_at: dt.datetime, run_id: str, day: dt.date):
        self.files, self.ingested_at, self.run_id, self.day = files, ingested_at, run_id, day

    def _per_file(self, names: pa.Array, pick: str, type_: pa.DataType) -> pa.Array:
        return pa.array([getattr(self.files[n], pick) for n in names.to_pylist()], type=type_)

    def _common(self, source_file: pa.Array) -> dict[str, pa.Array]:
        n = len(source_file)
        return {
            PARTITION_COLUMN: pa.repeat(pa.scalar(self.day, pa.date32()), n),
            "_source": pa.repeat(pa.scalar(SOURCE, pa.string()), n),
            "_source_file": source_file.cast(pa.string()),
            "_checksum_sha256": self._per_file(source_file, "sha256", pa.string()),
            "_schema_version": pa.repeat(pa.scalar(ORDERS.schema_version, pa.int32()), n),
            "_received_at": self._per_file(source_file, "received_at", pa.timestamp("us", tz="UTC")),
            "_ingested_at": pa.repeat(pa.scalar(self.ingested_at, pa.timestamp("us", tz="UTC")), n),
            "_run_id": pa.repeat(pa.scalar(self.run_id, pa.string()), n),
        }

    def bronze_batch(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        columns = self._common(batch.column(SOURCE_FILE))
        columns["_source_row"] = batch.column(SOURCE_ROW).cast(pa.int64())
        arrays = []
        for f in BRONZE_SCHEMA:
            value = columns[f.name] if f.name in columns else batch.column(f.name)
            arrays.append(value.cast(f.type))
        return pa.RecordBatch.from_arrays(arrays, schema=BRONZE_SCHEMA)

    def quarantine_table(self, table: pa.Table) -> pa.Table:
        table = table.combine_chunks()
        columns = self._common(table.column(SOURCE_FILE).combine_chunks())
        columns["_source_row"] = table.column(SOURCE_ROW).combine_chunks().cast(pa.int64())
        columns["_source_line"] = columns["_source_row"]  # JSON Lines: one record per line
        columns["_raw_record"] = table.column("_raw_json").combine_chunks().cast(pa.string())
        columns["_reasons"] = table.column("_all_reasons").combine_chunks().cast(pa.list_(pa.string()))
        return pa.Table.from_arrays([columns[f.name] for f in QUARANTINE_SCHEMA], schema=QUARANTINE_SCHEMA)


def order_dates_in(paths: list[Path], directory: Path) -> list[str]:
    """The business dates the records of these landed files belong to (their valid `order_date`, else
    the UTC date they were extracted on), sorted: the bronze partitions a delivery touches."""
    dates: set[str] = set()
    wanted = {p.resolve() for p in paths}
    for batch in read_airbyte_records(directory, EDGE_SCHEMA):
        table = pa.Table.from_batches([batch])
        for source_file, order_date, extracted in zip(
            table[SOURCE_FILE].to_pylist(),
            table["order_date"].to_pylist(),
            table[EXTRACTED_AT].to_pylist(),
            strict=True,
        ):
            if (directory / source_file).resolve() not in wanted:
                continue
            try:
                dates.add(dt.date.fromisoformat(order_date).isoformat() if order_date else extracted.date().isoformat())
            except ValueError:
                dates.add(extracted.date().isoformat())
    return sorted(dates)
