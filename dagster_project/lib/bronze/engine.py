"""The bronze hop: landed files -> typed Delta partition + quarantine partition, streamed in batches.

A partition is rebuilt from every file landed for its date and replaced in one Delta commit
(`predicate` overwrite), so a re-run or a backfill yields the same rows and never duplicates.
Memory stays flat: DuckDB parses and checks the file in batches, good rows stream into the Delta
writer, and rows that break the contract are spooled to a temporary Arrow file until their commit.
Received = loaded + quarantined for every file, checked before anything is committed.
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

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import WriterProperties, write_deltalake

from dagster_project.lib.bronze.contract import (
    LINEAGE_COLUMNS,
    PARTITION_COLUMN,
    QUARANTINE_SCHEMA,
    bronze_schema,
    pandera_schema,
    read_header,
    resolve_columns,
    select_sql,
)
from dagster_project.lib.intake.landing import Manifest
from dagster_project.lib.sources.registry import FeedSpec

DEFAULT_BATCH_ROWS = 256 * 1024


@dataclass
class FileLoad:
    file_name: str
    sha256: str
    loaded: int = 0
    quarantined: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def received(self) -> int:
        return self.loaded + self.quarantined


@dataclass
class PartitionLoad:
    feed: str
    business_date: str
    files: list[FileLoad]

    @property
    def loaded(self) -> int:
        return sum(f.loaded for f in self.files)

    @property
    def quarantined(self) -> int:
        return sum(f.quarantined for f in self.files)

    @property
    def received(self) -> int:
        return sum(f.received for f in self.files)

    @property
    def reasons(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for f in self.files:
            total.update(f.reasons)
        return total


def _csv_source(spec: FeedSpec, header: list[str], index: int) -> str:
    # Every column is read as text, named from the header, with no dialect sniffing: nothing is lost to
    # type guessing, and one broken line (say an unterminated quote) cannot make the reader give up on
    # the file. Lines the parser cannot split into the header's columns go to a rejects table with
    # their line number and text instead of failing the file.
    def literal(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    columns = ", ".join(f"{literal(name)}: 'VARCHAR'" for name in header)
    return (
        f"read_csv(?, header=true, auto_detect=false, columns={{{columns}}}, delim={literal(spec.delimiter)}, "
        f"quote='\"', escape='\"', strict_mode=true, ignore_errors=true, store_rejects=true, "
        f"rejects_table='rejects_{index}', rejects_scan='rejects_scan_{index}')"
    )


def _constant(value: object, type_: pa.DataType, length: int) -> pa.Array:
    if pa.types.is_dictionary(type_):
        # One dictionary entry and zero indices: the writer encodes the column once instead of hashing
        # the same string on every row (Delta stores it as a plain string column).
        return pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(length, dtype=np.int32)), pa.array([value], type=type_.value_type)
        )
    return pa.repeat(pa.scalar(value, type=type_), length)


def _writer_schema(schema: pa.Schema) -> pa.Schema:
    """The bronze schema as batches carry it: constant lineage strings dictionary-encoded."""
    return pa.schema(
        [
            pa.field(f.name, pa.dictionary(pa.int32(), f.type), nullable=f.nullable)
            if f.name in LINEAGE_COLUMNS and pa.types.is_string(f.type)
            else f
            for f in schema
        ]
    )


class _Lineage:
    """The lineage columns of one file, built once per batch length."""

    def __init__(self, manifest: Manifest, ingested_at: dt.datetime, run_id: str, schema_version: int):
        self.values = {
            "_source": (manifest.source, pa.string()),
            "_source_file": (manifest.file_name, pa.string()),
            "_checksum_sha256": (manifest.sha256, pa.string()),
            "_schema_version": (schema_version, pa.int32()),
            "_received_at": (dt.datetime.fromisoformat(manifest.received_at), pa.timestamp("us", tz="UTC")),
            "_ingested_at": (ingested_at, pa.timestamp("us", tz="UTC")),
            "_run_id": (run_id, pa.string()),
        }
        self.business_date = dt.date.fromisoformat(manifest.business_date)

    def column(self, name: str, length: int, type_: pa.DataType | None = None) -> pa.Array:
        if name == PARTITION_COLUMN:
            return _constant(self.business_date, pa.date32(), length)
        value, default_type = self.values[name]
        return _constant(value, type_ or default_type, length)


def _good_batch(batch: pa.RecordBatch, rows: pa.Array, schema: pa.Schema, lineage: _Lineage) -> pa.RecordBatch:
    n = batch.num_rows
    arrays = []
    for f in schema:
        if f.name == "_source_row":
            arrays.append(rows)
        elif f.name in batch.schema.names:
            arrays.append(batch.column(f.name))
        else:
            arrays.append(lineage.column(f.name, n, f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _quarantine_batch(
    lineage: _Lineage,
    rows: pa.Array | None,
    lines: pa.Array | None,
    raw: pa.Array,
    reasons: pa.Array,
) -> pa.RecordBatch:
    n = len(raw)
    arrays = []
    for f in QUARANTINE_SCHEMA:
        if f.name == "_source_row":
            arrays.append(rows if rows is not None else pa.nulls(n, pa.int64()))
        elif f.name == "_source_line":
            arrays.append(lines if lines is not None else pa.nulls(n, pa.int64()))
        elif f.name == "_raw_record":
            arrays.append(raw)
        elif f.name == "_reasons":
            arrays.append(reasons)
        else:
            arrays.append(lineage.column(f.name, n))
    return pa.RecordBatch.from_arrays(arrays, schema=QUARANTINE_SCHEMA)


def _prefetched(batches: Iterator[pa.RecordBatch], depth: int = 2) -> Iterator[pa.RecordBatch]:
    """Produce batches on a worker thread so parsing and checking overlap with the Delta writer."""
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


class _FileReader:
    """Streams one landed file through the contract: good batches out, bad rows into the spool."""

    def __init__(self, con: duckdb.DuckDBPyConnection, spec: FeedSpec, spool: pa.ipc.RecordBatchStreamWriter):
        self.con, self.spec, self.spool = con, spec, spool
        self.schema = _writer_schema(bronze_schema(spec))
        self.contract = pandera_schema(spec)

    def read(self, index: int, manifest: Manifest, lineage: _Lineage, load: FileLoad, batch_rows: int):
        path = Path(manifest.landed_path)
        header = read_header(path, self.spec.delimiter)
        present = resolve_columns(self.spec, header, manifest.file_name)
        query = select_sql(self.spec, present, source=_csv_source(self.spec, header, index))
        row = 0
        for batch in self.con.sql(query, params=[str(path)]).to_arrow_reader(batch_rows):
            rows = pa.array(np.arange(row + 1, row + batch.num_rows + 1, dtype=np.int64))
            row += batch.num_rows
            bad = pc.is_valid(batch.column("_reasons"))
            n_bad = pc.sum(bad).as_py() or 0
            if n_bad:
                rejected = batch.filter(bad)
                self._quarantine(
                    load, lineage, rejected.column("_reasons"), rejected.column("_raw_record"), rows=rows.filter(bad)
                )
                keep = pc.invert(bad)
                batch, rows = batch.filter(keep), rows.filter(keep)
            load.loaded += batch.num_rows
            if batch.num_rows:
                good = _good_batch(batch, rows, self.schema, lineage)
                self.contract.validate(pl.from_arrow(good))
                yield good
        unparsed = _rejected_lines(self.con, index)
        if unparsed is not None:
            self._quarantine(
                load, lineage, unparsed.column("reasons"), unparsed.column("csv_line"), lines=unparsed.column("line")
            )

    def _quarantine(
        self,
        load: FileLoad,
        lineage: _Lineage,
        reasons: pa.Array,
        raw: pa.Array,
        *,
        rows: pa.Array | None = None,
        lines: pa.Array | None = None,
    ) -> None:
        load.quarantined += len(raw)
        load.reasons.update(pc.list_flatten(reasons).to_pylist())
        self.spool.write_batch(_quarantine_batch(lineage, rows, lines, raw, reasons))


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
            writer_properties=WriterProperties(compression="ZSTD", compression_level=1),
            description=description,
        )
    except Exception:
        if failures:
            raise failures[0] from None
        raise


def load_partition(
    spec: FeedSpec,
    manifests: list[Manifest],
    *,
    business_date: str,
    bronze_path: Path,
    quarantine_path: Path,
    run_id: str,
    ingested_at: dt.datetime | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> PartitionLoad:
    """Replace one bronze partition (and its quarantine partition) with the rows of `manifests`."""
    day = dt.date.fromisoformat(business_date)
    ingested_at = ingested_at or dt.datetime.now(dt.UTC)
    for manifest in manifests:
        if manifest.business_date != business_date:
            raise ValueError(f"{manifest.file_name}: belongs to {manifest.business_date}, not {business_date}")
    result = PartitionLoad(feed=spec.name, business_date=business_date, files=[])
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")  # timestamps without an offset are read as UTC

    with tempfile.TemporaryDirectory(prefix="medallion-quarantine-") as tmp:
        spool_path = Path(tmp) / "quarantine.arrows"
        with pa.OSFile(str(spool_path), "wb") as sink, pa.ipc.new_stream(sink, QUARANTINE_SCHEMA) as spool:
            reader = _FileReader(con, spec, spool)

            def good_batches() -> Iterator[pa.RecordBatch]:
                for index, manifest in enumerate(manifests):
                    load = FileLoad(file_name=manifest.file_name, sha256=manifest.sha256)
                    result.files.append(load)
                    lineage = _Lineage(manifest, ingested_at, run_id, spec.schema_version)
                    yield from reader.read(index, manifest, lineage, load, batch_rows)

            replace_partition(
                bronze_path, reader.schema, _prefetched(good_batches()), day, description=spec.description
            )
        with pa.OSFile(str(spool_path), "rb") as source:
            replace_partition(
                quarantine_path,
                QUARANTINE_SCHEMA,
                pa.ipc.open_stream(source),
                day,
                description=f"Rows of feed {spec.name} that broke its contract, with every reason.",
            )
    con.close()
    return result


def _rejected_lines(con: duckdb.DuckDBPyConnection, index: int) -> pa.RecordBatch | None:
    """Lines the CSV parser could not read, one row per line with every parser error."""
    table = con.sql(
        f"""
        SELECT line::BIGINT AS line,
               any_value(trim(csv_line, chr(13) || chr(10))) AS csv_line,
               list(DISTINCT reason ORDER BY reason) AS reasons
        FROM (SELECT *, 'malformed CSV line: ' || lower(error_type) AS reason FROM rejects_{index})
        GROUP BY line
        ORDER BY line
        """
    ).to_arrow_table()
    return table.combine_chunks().to_batches()[0] if table.num_rows else None
