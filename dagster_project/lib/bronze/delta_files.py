"""The data files of one partition of a bronze or quarantine Delta table: written while the input is read,
committed afterwards as one replacement of the partition (`replace_partition`), or deleted.

Why not `deltalake.write_deltalake`: it writes and commits in one call, and a load commits quarantine before
bronze while the bronze rows stream. Fed from a Python stream it also reads ahead of its Parquet encoder
without bound (a 10M-row partition held about 1.7 GB), and it holds one of deltalake's runtime threads while
it waits, so a second commit made meanwhile deadlocks a process with one CPU. Here pyarrow encodes each group
of rows as it comes (one row group, the GIL released), files are closed at about `TARGET_FILE_BYTES`, and the
commit is a separate, short Delta transaction (`DeltaTable.create_write_transaction`): memory holds a group
of rows, whatever the partition's size.

Each file's Delta statistics (row count, and min, max and null count of the columns the table keeps
statistics for, `delta.dataSkippingStatsColumns`) are read from the Parquet footer the writer produced,
formatted as delta-rs formats them. Until the commit the files are invisible to every reader of the table;
files of a load that fails are deleted (a killed process leaves some behind, unreferenced, for VACUUM).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import threading
import time
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from dagster_project.lib.bronze.contract import PARTITION_COLUMN
from dagster_project.lib.lake import Lake

if TYPE_CHECKING:
    import pyarrow.parquet as pq
    from deltalake import DeltaTable
    from deltalake.transaction import AddAction

# Bytes of compressed data in a file before the next row group goes to a new file.
TARGET_FILE_BYTES = 32 * 1024 * 1024
# Groups of rows waiting for the encoder thread: it encodes a group in about a quarter of the time the load
# takes to read and check the next, so one keeps it busy.
QUEUE_DEPTH = 1
# Delta's default when a table names no statistics columns (`delta.dataSkippingNumIndexedCols`).
DEFAULT_INDEXED_COLUMNS = 32


class TableSchemaMismatch(ValueError):
    """The Delta table's columns are not the ones the load writes (the source declaration changed)."""


def _plain(type_: pa.DataType) -> pa.DataType:
    return type_.value_type if pa.types.is_dictionary(type_) else type_


class PartitionFiles:
    """New data files of the `day` partition of `table` (at `uri` on `lake`), written from groups of rows
    of `schema` (which holds the partition column; strings may be dictionary-encoded)."""

    def __init__(self, table: DeltaTable, name: str, uri: str, lake: Lake, schema: pa.Schema, day: dt.date):
        expected = pa.schema([pa.field(f.name, _plain(f.type), f.nullable) for f in schema])
        actual = pa.schema(table.schema().to_arrow())
        if not actual.equals(expected):
            raise TableSchemaMismatch(
                f"{name}: the table's columns ({actual.to_string(show_schema_metadata=False)}) are not the ones "
                f"this load writes ({expected.to_string(show_schema_metadata=False)})"
            )
        self.name, self.uri, self.lake, self.day = name, uri, lake, day
        self.file_schema = pa.schema([f for f in schema if f.name != PARTITION_COLUMN])
        self.required = [f.name for f in self.file_schema if not f.nullable]
        self.dictionary = [f.name for f in self.file_schema if pa.types.is_dictionary(f.type)]
        self.stats_columns = _stats_columns(table, self.file_schema)
        self.prefix = f"{PARTITION_COLUMN}={day.isoformat()}"
        self.adds: list[AddAction] = []
        self.written: list[str] = []  # table-relative paths of every file opened, committed or not
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._sink: Any = None
        self._path = ""
        self._id = uuid.uuid4()

    def write(self, rows: pa.Table) -> None:
        """Encode `rows` (the file schema's columns, without the partition column) as one row group."""
        if not rows.num_rows:
            return
        for name in self.required:  # what delta-rs's writer enforced for a column declared NOT NULL
            if rows.column(name).null_count:
                raise ValueError(f"{self.name}: column {name} is declared not null but a row has no value")
        if self._writer is None:
            self._open()
        assert self._writer is not None
        self._writer.write_table(rows, row_group_size=rows.num_rows)
        self.rows += rows.num_rows
        if self._sink.tell() >= TARGET_FILE_BYTES:
            self._close_file()

    def close(self) -> list[AddAction]:
        """Finish the open file; the add actions of every file written."""
        if self._writer is not None:
            self._close_file()
        return self.adds

    def discard(self) -> None:
        """Delete every file written (none of them committed); best effort, as VACUUM removes what is left."""
        if self._writer is not None:
            try:
                self._writer.close()
                self._sink.close()
            except Exception:  # noqa: BLE001 - the file goes anyway
                pass
            self._writer = None
        for path in self.written:
            try:
                if self.lake.is_local:
                    os.remove(f"{self.uri}/{path}")
                else:
                    import obstore

                    obstore.delete(self.lake.store, f"{self.lake.relative(self.uri)}/{path}")
            except Exception:  # noqa: BLE001
                pass
        self.written, self.adds = [], []

    def _open(self) -> None:
        import pyarrow.parquet as pq

        self._footers: list[pq.FileMetaData] = []
        self._path = f"{self.prefix}/part-{len(self.written):05d}-{self._id}-c000.zstd.parquet"
        self.written.append(self._path)
        if self.lake.is_local:
            os.makedirs(f"{self.uri}/{self.prefix}", exist_ok=True)
            self._sink = pa.OSFile(f"{self.uri}/{self._path}", "wb")
        else:
            import obstore

            remote = obstore.open_writer(self.lake.store, f"{self.lake.relative(self.uri)}/{self._path}")
            self._sink = pa.PythonFile(_ObjectWriter(remote), mode="w")
        # No dictionary pages but for the dictionary-encoded columns (the load's constants): most columns are
        # near-unique (ids, emails, times), where a writer pays for a dictionary it then abandons. Statistics
        # only for the columns the table keeps them for in its log: the footer holds no raw value of a personal
        # column either. No Arrow schema in the footer: readers take the types from the table.
        self._writer = pq.ParquetWriter(
            self._sink,
            self.file_schema,
            compression="zstd",
            compression_level=1,
            use_dictionary=self.dictionary or False,
            write_statistics=[n for n in self.file_schema.names if n in self.stats_columns] or False,
            store_schema=False,
            metadata_collector=self._footers,
        )

    def _close_file(self) -> None:
        from deltalake.transaction import AddAction

        assert self._writer is not None
        self._writer.close()
        size = self._sink.tell()
        self._sink.close()
        metadata = self._footers[-1]
        self._writer = None
        self.adds.append(
            AddAction(
                path=self._path,
                size=size,
                partition_values={PARTITION_COLUMN: self.day.isoformat()},
                modification_time=int(time.time() * 1000),
                data_change=True,
                stats=json.dumps(delta_stats(metadata, self.stats_columns), separators=(",", ":")),
            )
        )


class _ObjectWriter:
    """An object store upload (obstore's writer: a multipart upload, completed on close) as the file object
    pyarrow writes to (obstore's `closed` is a method, which pyarrow would take for a closed file)."""

    def __init__(self, inner: Any):
        self._inner, self._closed = inner, False

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, data: bytes) -> int:
        self._inner.write(data)
        return len(data)

    def flush(self) -> None:
        self._inner.flush()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._inner.close()


def _stats_columns(table: DeltaTable, file_schema: pa.Schema) -> set[str]:
    configuration = table.metadata().configuration
    named = configuration.get("delta.dataSkippingStatsColumns")
    if named:
        return {c.strip().strip("`") for c in named.split(",") if c.strip()}
    count = int(configuration.get("delta.dataSkippingNumIndexedCols", DEFAULT_INDEXED_COLUMNS))
    names = file_schema.names
    return set(names if count < 0 else names[:count])


def delta_stats(metadata: pq.FileMetaData, columns: set[str]) -> dict[str, Any]:
    """A data file's Delta statistics from its Parquet footer: over every row group, min, max and null count
    of the flat `columns` (a column left without min or max in a row group that holds values of it keeps
    only its null count; nested columns get none)."""
    minimum: dict[str, Any] = {}
    maximum: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    schema = metadata.schema
    for i in range(metadata.num_columns):
        name = schema.column(i).path
        if name not in columns or schema.column(i).max_repetition_level or "." in name:
            continue
        lo = hi = None
        null_count, bounded, complete = 0, True, True
        for g in range(metadata.num_row_groups):
            chunk = metadata.row_group(g).column(i)
            stats = chunk.statistics
            if stats is None or not stats.has_null_count:
                complete = False
                break
            null_count += stats.null_count
            if chunk.num_values - stats.null_count <= 0:
                continue  # only nulls here: nothing to bound
            if not stats.has_min_max:
                bounded = False
                continue
            lo = stats.min if lo is None or stats.min < lo else lo
            hi = stats.max if hi is None or stats.max > hi else hi
        if not complete:
            continue
        nulls[name] = null_count
        if bounded and lo is not None and hi is not None:
            minimum[name], maximum[name] = _json_value(lo), _json_value(hi)
    return {"numRecords": metadata.num_rows, "minValues": minimum, "maxValues": maximum, "nullCount": nulls}


def _json_value(value: Any) -> Any:
    """A statistic as delta-rs writes it: dates `YYYY-MM-DD`, timestamps in UTC with as many fraction digits
    as needed (0, 3 or 6), decimals as numbers."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        micros = value.microsecond
        fraction = "" if not micros else f".{micros // 1000:03d}" if not micros % 1000 else f".{micros:06d}"
        return value.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return value


def replace_partition(
    table: DeltaTable,
    adds: list[AddAction],
    day: dt.date,
    metadata: dict[str, Any],
    app_id: str,
    load: int,
) -> None:
    """Replace the `day` partition of `table` (pinned) with the files of `adds`, in one commit carrying
    `metadata` and the transaction id `app_id` at version `load`. A commit lost to a concurrent commit of
    the same partition raises deltalake's `CommitFailedError`."""
    from deltalake import CommitProperties, Transaction

    table.create_write_transaction(
        adds,
        mode="overwrite",
        schema=table.schema(),
        partition_by=[PARTITION_COLUMN],
        partition_filters=[(PARTITION_COLUMN, "=", day.isoformat())],
        commit_properties=CommitProperties(custom_metadata=metadata, app_transactions=[Transaction(app_id, load)]),
    )


class BackgroundWriter:
    """Feeds `files` from another thread, so that encoding overlaps reading: `put` hands over a group of rows
    (waiting while `QUEUE_DEPTH` groups wait), `finish` waits for the last; both raise the writer's error."""

    _END = object()

    def __init__(self, files: PartitionFiles):
        self.files = files
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"medallion-writer-{files.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            rows = self._queue.get()
            if rows is self._END:
                return
            if self._error is None:
                try:
                    self.files.write(rows)
                except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
                    self._error = exc

    def put(self, rows: pa.Table) -> None:
        self._raise()
        self._queue.put(rows)

    def finish(self) -> None:
        self._queue.put(self._END)
        self._thread.join()
        self._raise()

    def abort(self) -> None:
        """Stop the thread without raising (the load fails for another reason)."""
        if self._thread.is_alive():
            self._error = self._error or RuntimeError("aborted")
            self._queue.put(self._END)
            self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error
