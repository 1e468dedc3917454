"""The bronze engine: what a reader produced for one business date -> typed Delta partition + quarantine partition.

One engine loads every source. A reader (`lib/bronze/readers/`, one per kind of input) turns what landed for
the date into checked record batches: the declared columns typed, the lineage of each record, and
`_reasons`, every rule the record breaks (null when it breaks none) with `_raw_record`, the record as
received. The engine sends the good records into the bronze partition and the others into the quarantine
partition, with one lineage builder and one quarantine schema for all sources.

A partition is rebuilt from everything landed for its date and replaced in one Delta commit (`predicate`
overwrite), so a re-run or a backfill yields the same rows and never duplicates. Memory stays flat: good
batches stream into the Delta writer, and quarantined records are spooled to a temporary Arrow file until
their own commit. Per origin (a file, the inbox) received = loaded + quarantined + duplicates dropped.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dagster_project.lib.bronze.contract import LINEAGE_COLUMNS, PARTITION_COLUMN, QUARANTINE_SCHEMA, bronze_schema
from dagster_project.lib.sources.spec import SourceSpec

# Rows a reader hands over at most, and per typed-contract validation: large enough that a validation's fixed
# cost is small, small enough that what is in flight (reader, queue, validation, writer) stays well in memory.
DEFAULT_BATCH_ROWS = 128 * 1024
# Bytes of compressed data the Delta writer holds before it closes a file: what it buffers stays bounded
# whatever the partition's size.
TARGET_FILE_BYTES = 32 * 1024 * 1024

# Lineage a reader gives each record; the engine adds the rest (`_source`, `_schema_version`, run columns).
READER_LINEAGE = ("_source_file", "_source_row", "_checksum_sha256", "_received_at")
REASONS = "_reasons"
RAW_RECORD = "_raw_record"
SOURCE_LINE = "_source_line"


@dataclass
class OriginLoad:
    """What one origin (a landed file, the webhook inbox, a destination folder) gave the partition."""

    origin: str
    sha256: str | None = None
    loaded: int = 0
    quarantined: int = 0
    duplicates: int = 0  # records the reader dropped as an older or repeated delivery of a key
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def received(self) -> int:
        return self.loaded + self.quarantined + self.duplicates


@dataclass
class LoadResult:
    """The one result of a partition load, whatever the source."""

    source: str
    business_date: str
    origins: list[OriginLoad]
    details: dict[str, Any] = field(default_factory=dict)  # figures only this kind of input has

    @property
    def loaded(self) -> int:
        return sum(o.loaded for o in self.origins)

    @property
    def quarantined(self) -> int:
        return sum(o.quarantined for o in self.origins)

    @property
    def duplicates(self) -> int:
        return sum(o.duplicates for o in self.origins)

    @property
    def received(self) -> int:
        return sum(o.received for o in self.origins)

    @property
    def reasons(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for o in self.origins:
            total.update(o.reasons)
        return total


class Reader(Protocol):
    """Reads what landed for one business date (`business_date`) as checked record batches.

    `read` yields `(origin, batch)`; a batch holds the declared columns typed (null where a record could not
    be typed), `READER_LINEAGE`, `_reasons` (null for a good record) and `_raw_record`, and optionally
    `_source_line` and the reader's own bronze fields. Every origin read is in `origins` (in reading order,
    including those that gave no record), with the duplicates the reader dropped already counted.
    """

    business_date: dt.date
    origins: list[OriginLoad]

    def read(self, batch_rows: int) -> Iterator[tuple[OriginLoad, pa.RecordBatch]]: ...

    def details(self) -> dict[str, Any]: ...


def constant(value: object, type_: pa.DataType, length: int) -> pa.Array:
    """`value` repeated `length` times; a dictionary type encodes it once instead of hashing every row."""
    if pa.types.is_dictionary(type_):
        return pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(length, dtype=np.int32)), pa.array([value], type=type_.value_type)
        )
    return pa.repeat(pa.scalar(value, type=type_), length)


def writer_schema(spec: SourceSpec) -> pa.Schema:
    """The bronze schema as batches carry it: lineage strings dictionary-encoded (Delta stores plain strings)."""
    return pa.schema(
        [
            pa.field(f.name, pa.dictionary(pa.int32(), f.type), nullable=f.nullable)
            if f.name in LINEAGE_COLUMNS and pa.types.is_string(f.type)
            else f
            for f in bronze_schema(spec)
        ]
    )


class _Lineage:
    """The lineage columns that are the same for every record of the load."""

    def __init__(self, spec: SourceSpec, day: dt.date, ingested_at: dt.datetime, run_id: str):
        self.values: dict[str, tuple[object, pa.DataType]] = {
            PARTITION_COLUMN: (day, pa.date32()),
            "_source": (spec.lineage_source, pa.string()),
            "_schema_version": (spec.schema_version, pa.int32()),
            "_ingested_at": (ingested_at, pa.timestamp("us", tz="UTC")),
            "_run_id": (run_id, pa.string()),
        }

    def column(self, name: str, length: int, type_: pa.DataType | None = None) -> pa.Array:
        value, default_type = self.values[name]
        return constant(value, type_ or default_type, length)

    def bronze(self, batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
        n = batch.num_rows
        arrays = []
        for f in schema:
            if f.name in self.values:
                arrays.append(self.column(f.name, n, f.type))
            else:
                column = batch.column(f.name)
                arrays.append(column if column.type == f.type else column.cast(f.type))
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    def quarantine(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        n = batch.num_rows
        arrays = []
        for f in QUARANTINE_SCHEMA:
            if f.name in self.values:
                arrays.append(self.column(f.name, n))
            elif f.name in batch.schema.names:
                column = batch.column(f.name)
                arrays.append(column if column.type == f.type else column.cast(f.type))
            else:
                arrays.append(pa.nulls(n, f.type))
        return pa.RecordBatch.from_arrays(arrays, schema=QUARANTINE_SCHEMA)


def _prefetched(batches: Iterator[pa.RecordBatch], depth: int = 1) -> Iterator[pa.RecordBatch]:
    """Produce batches on a worker thread so reading and checking overlap with the Delta writer.

    One batch ahead is enough to keep both busy; each more is memory held for nothing."""
    queue: Queue[pa.RecordBatch | BaseException | None] = Queue(maxsize=depth)

    def produce() -> None:
        try:
            for batch in batches:
                queue.put(batch)
            queue.put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            queue.put(exc)

    worker = threading.Thread(target=produce, name="bronze-producer", daemon=True)
    worker.start()
    while (item := queue.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item
    worker.join()


def replace_partition(
    path: Path,
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    day: dt.date,
    *,
    description: str,
) -> None:
    """Replace the `day` partition of the Delta table at `path` with `batches`, in one commit.

    The batches stream into the writer, so memory stays flat. An error raised while producing them (a
    ContractError naming the file, say) propagates as itself, not wrapped in the writer's DeltaError.
    """
    from deltalake import ColumnProperties, WriterProperties, write_deltalake

    failures: list[BaseException] = []

    def watched() -> Iterator[pa.RecordBatch]:
        try:
            yield from batches
        except BaseException as exc:
            failures.append(exc)
            raise

    try:
        write_deltalake(
            path,
            pa.RecordBatchReader.from_batches(schema, watched()),
            partition_by=[PARTITION_COLUMN],
            mode="overwrite",
            predicate=f"{PARTITION_COLUMN} = '{day.isoformat()}'",  # a date object: nothing to inject
            target_file_size=TARGET_FILE_BYTES,
            # No dictionary pages: most columns are near-unique (ids, emails, times), where the writer pays
            # for a dictionary it then abandons; ZSTD alone stores the repetitive ones smaller and about a
            # third faster.
            writer_properties=WriterProperties(
                compression="ZSTD",
                compression_level=1,
                default_column_properties=ColumnProperties(dictionary_enabled=False),
            ),
            description=description,
        )
    except Exception:
        if failures:
            raise failures[0] from None
        raise


def load_partition(
    spec: SourceSpec,
    reader: Reader,
    *,
    bronze_path: Path,
    quarantine_path: Path,
    run_id: str,
    ingested_at: dt.datetime | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> LoadResult:
    """Replace the bronze partition of `spec` for the reader's business date (and its quarantine partition)
    with what `reader` reads."""
    import polars as pl

    from dagster_project.lib.bronze.contract import pandera_schema

    day = reader.business_date
    lineage = _Lineage(spec, day, ingested_at or dt.datetime.now(dt.UTC), run_id)
    schema = writer_schema(spec)
    contract = pandera_schema(spec)

    with tempfile.TemporaryDirectory(prefix="medallion-quarantine-") as tmp:
        spool_path = Path(tmp) / "quarantine.arrows"
        with pa.OSFile(str(spool_path), "wb") as sink, pa.ipc.new_stream(sink, QUARANTINE_SCHEMA) as spool:

            def checked(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
                """Every good batch, validated against the typed contract before the writer sees it.

                Batches are validated in groups of at least `batch_rows` rows (a zero-copy polars view of
                them): a validation costs about the same whatever its size, and readers hand over smaller
                batches than that."""
                pending: list[pa.RecordBatch] = []
                rows = 0
                for batch in batches:
                    pending.append(batch)
                    rows += batch.num_rows
                    if rows >= batch_rows:
                        contract.validate(pl.from_arrow(pa.Table.from_batches(pending, schema), rechunk=False))
                        yield from pending
                        pending, rows = [], 0
                if pending:
                    contract.validate(pl.from_arrow(pa.Table.from_batches(pending, schema), rechunk=False))
                    yield from pending

            def good_batches() -> Iterator[pa.RecordBatch]:
                for origin, batch in reader.read(batch_rows):
                    reasons = batch.column(REASONS)
                    bad = pc.is_valid(reasons)
                    n_bad = pc.sum(bad).as_py() or 0
                    if n_bad:
                        rejected = batch.filter(bad)
                        origin.quarantined += rejected.num_rows
                        origin.reasons.update(pc.list_flatten(rejected.column(REASONS)).to_pylist())
                        spool.write_batch(lineage.quarantine(rejected))
                        batch = batch.filter(pc.invert(bad))
                    if batch.num_rows:
                        origin.loaded += batch.num_rows
                        yield lineage.bronze(batch, schema)

            replace_partition(
                bronze_path, schema, _prefetched(checked(good_batches())), day, description=spec.description
            )
        with pa.OSFile(str(spool_path), "rb") as source:
            replace_partition(
                quarantine_path,
                QUARANTINE_SCHEMA,
                pa.ipc.open_stream(source),
                day,
                description=f"Records of source {spec.name} that broke its contract, with every reason.",
            )
    return LoadResult(source=spec.name, business_date=day.isoformat(), origins=reader.origins, details=reader.details())
