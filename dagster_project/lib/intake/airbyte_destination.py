"""Read what an Airbyte destination wrote into the landing zone.

Format: Airbyte Destinations V2 records as JSON Lines, one record per line, optionally gzipped (file
storage destinations such as S3 / local JSON with root-level flattening write
`<stream>/<yyyy>_<mm>_<dd>_<epoch ms>_<part>.jsonl[.gz]`). Each record carries

- `_airbyte_raw_id`        uuid of the record, new on every delivery
- `_airbyte_extracted_at`  when the source emitted it: epoch milliseconds, or an ISO 8601 string
- `_airbyte_meta`          `{"sync_id": int, "changes": [{"field", "change", "reason"}, ...]}` (object or
                           JSON string); `changes` lists values the platform nulled or truncated
- `_airbyte_generation_id` increases on every refresh/clear of the stream
- the stream's data columns at the top level (or nested under `_airbyte_data` without flattening; they
  are lifted to the top level here).

The folder is read from the lake, a local folder or an object store (a `Lake` rooted at the stream's
folder): on an object store each file is one streamed GET, read line by line, never held whole.

Airbyte delivers at least once: the same business key can arrive several times, in one sync or across
syncs. `deduplicate_latest` keeps, per key, the record with the latest `_airbyte_extracted_at` (then the
highest generation, then the one delivered last).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import obstore
import pyarrow as pa
import pyarrow.compute as pc

from dagster_project.lib.intake.landing import open_object
from dagster_project.lib.lake import Lake

RAW_ID = "_airbyte_raw_id"
EXTRACTED_AT = "_airbyte_extracted_at"
META = "_airbyte_meta"
GENERATION_ID = "_airbyte_generation_id"
AIRBYTE_COLUMNS = (RAW_ID, EXTRACTED_AT, META, GENERATION_ID)
SOURCE_FILE = "_source_file"
SOURCE_ROW = "_source_row"

CHANGE_TYPE = pa.struct([("field", pa.string()), ("change", pa.string()), ("reason", pa.string())])
META_TYPE = pa.struct([("sync_id", pa.int64()), ("changes", pa.list_(CHANGE_TYPE))])
AIRBYTE_FIELDS = (
    pa.field(RAW_ID, pa.string(), nullable=False),
    pa.field(EXTRACTED_AT, pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field(META, META_TYPE),
    pa.field(GENERATION_ID, pa.int64()),
)
LINEAGE_FIELDS = (
    pa.field(SOURCE_FILE, pa.string(), nullable=False),  # path relative to the directory read
    pa.field(SOURCE_ROW, pa.int64(), nullable=False),  # 1-based line number in that file
)

_RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz")
_GZIP_MAGIC = b"\x1f\x8b"


class AirbyteRecordError(ValueError):
    """A record that is not in Airbyte's destination format, named by file and line."""

    def __init__(self, file: str, line: int, reason: str) -> None:
        super().__init__(f"{file}:{line}: {reason}")
        self.file = file
        self.line = line
        self.reason = reason


def record_schema(data_schema: pa.Schema) -> pa.Schema:
    """Arrow schema of the batches `read_airbyte_records` yields for a stream with these data columns."""
    clash = [name for name in data_schema.names if name in AIRBYTE_COLUMNS or name in (SOURCE_FILE, SOURCE_ROW)]
    if clash:
        raise ValueError(f"data columns clash with Airbyte or lineage columns: {clash}")
    return pa.schema([*AIRBYTE_FIELDS, *data_schema, *LINEAGE_FIELDS])


Folder = Lake | str | Path  # a Lake rooted at the stream's folder, or a local folder


@dataclass(frozen=True)
class RecordFile:
    """One file the destination wrote: its path relative to the folder read, size and write time."""

    name: str
    size: int
    last_modified: datetime


def as_folder(folder: Folder) -> Lake:
    """The folder as a `Lake` rooted at it; a str or Path must be a local folder (an object store folder
    needs its credentials: pass `Lake(lake.uri(prefix), lake.storage_options)`)."""
    if isinstance(folder, Lake):
        return folder
    if "://" in str(folder):
        raise ValueError(f"{folder}: give an object store folder as a Lake, with its storage options")
    return Lake.parse(str(folder))


def record_files(folder: Folder) -> list[RecordFile]:
    """Record files under `folder` (recursively), in a stable order."""
    lake = as_folder(folder)
    if lake.is_local and not os.path.isdir(lake.root):
        return []  # not an error: the destination has not written yet
    return sorted(
        (
            RecordFile(meta["path"], meta["size"], meta["last_modified"])
            for batch in obstore.list(lake.store)
            for meta in batch
            if meta["path"].rsplit("/", 1)[-1].lower().endswith(_RECORD_SUFFIXES)
        ),
        key=lambda f: f.name,
    )


def read_airbyte_records(
    folder: Folder,
    data_schema: pa.Schema | None = None,
    *,
    batch_size: int = 10_000,
    on_unknown_column: Literal["fail", "ignore"] = "fail",
    files: Sequence[RecordFile] | None = None,
    digests: MutableMapping[str, str] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream every record under `folder` (or only of `files`) as Arrow batches of at most `batch_size` rows.

    Data columns follow `data_schema`; without one, it is inferred from the first batch and then held
    (all-null columns become strings). A data column missing from a record is null. A column the schema
    does not know fails the read (naming file and line) unless `on_unknown_column="ignore"`.
    Malformed records raise AirbyteRecordError with the file and line. `digests`, when given, receives the
    sha256 of each file read to its end (computed from the bytes as they are read, no second pass).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    lake = as_folder(folder)
    schema = record_schema(data_schema) if data_schema is not None else None
    rows: list[dict[str, Any]] = []
    for file in record_files(lake) if files is None else files:
        relative = file.name
        for line_no, record in _records(lake, relative, digests):
            rows.append(_normalise(record, relative, line_no))
            if len(rows) >= batch_size:
                schema = schema or _infer_schema(rows)
                yield _to_batch(rows, schema, on_unknown_column)
                rows = []
    if rows:
        schema = schema or _infer_schema(rows)
        yield _to_batch(rows, schema, on_unknown_column)


def deduplicate_latest(table: pa.Table, key: str | Sequence[str], *, order_column: str | None = None) -> pa.Table:
    """One row per key: the latest `_airbyte_extracted_at`, then highest generation, then last delivered.

    "Last delivered" is the row position, or `order_column` when given (ascending = delivered earlier).
    The result is sorted by key.
    """
    keys = [key] if isinstance(key, str) else list(key)
    missing = [k for k in [*keys, EXTRACTED_AT] if k not in table.column_names]
    if missing:
        raise ValueError(f"columns missing for deduplication: {missing}")
    for k in keys:
        if table[k].null_count:
            raise ValueError(f"key column {k!r} has {table[k].null_count} null value(s)")
    if table.num_rows == 0:
        return table
    work = table.append_column("__position", pa.array(range(table.num_rows), pa.int64()))
    tiebreak = order_column or "__position"
    sort_keys = [(k, "ascending") for k in keys] + [(EXTRACTED_AT, "descending")]
    if GENERATION_ID in work.column_names:
        sort_keys.append((GENERATION_ID, "descending"))
    sort_keys.append((tiebreak, "descending"))
    ordered = work.take(pc.sort_indices(work, sort_keys=sort_keys))  # nulls sort last
    n = ordered.num_rows
    first = None
    for k in keys:
        column = ordered[k].combine_chunks()
        changed = pc.not_equal(column.slice(1), column.slice(0, n - 1))
        first = changed if first is None else pc.or_(first, changed)
    is_first = pa.concat_arrays([pa.array([True]), first])
    return ordered.filter(is_first).drop_columns(["__position"])


def read_latest(
    folder: Folder,
    key: str | Sequence[str],
    data_schema: pa.Schema | None = None,
    *,
    batch_size: int = 10_000,
    on_unknown_column: Literal["fail", "ignore"] = "fail",
) -> pa.Table:
    """All records under `folder`, deduplicated on `key` (see `deduplicate_latest`), sorted by key.

    Reads in batches and compacts as it goes, so memory follows the number of distinct keys rather
    than the number of deliveries.
    """
    current: pa.Table | None = None
    pending: list[pa.Table] = []
    pending_rows = 0
    seq = 0
    for batch in read_airbyte_records(folder, data_schema, batch_size=batch_size, on_unknown_column=on_unknown_column):
        table = pa.Table.from_batches([batch])
        pending.append(table.append_column("__seq", pa.array(range(seq, seq + table.num_rows), pa.int64())))
        seq += table.num_rows
        pending_rows += table.num_rows
        if pending_rows >= max(batch_size, current.num_rows if current is not None else 0):
            current = deduplicate_latest(
                pa.concat_tables([t for t in (current, *pending) if t is not None]), key, order_column="__seq"
            )
            pending, pending_rows = [], 0
    if pending or current is not None:
        current = deduplicate_latest(
            pa.concat_tables([t for t in (current, *pending) if t is not None]), key, order_column="__seq"
        )
        return current.drop_columns(["__seq"])
    schema = record_schema(data_schema) if data_schema is not None else pa.schema([*AIRBYTE_FIELDS, *LINEAGE_FIELDS])
    return schema.empty_table()


# -- internals ---------------------------------------------------------------------------------------


def _records(
    lake: Lake, relative: str, digests: MutableMapping[str, str] | None
) -> Iterator[tuple[int, dict[str, Any]]]:
    sha = hashlib.sha256()
    with io.BufferedReader(_Hashing(open_object(lake, relative), sha), buffer_size=1024 * 1024) as raw:
        compressed = raw.peek(2)[:2] == _GZIP_MAGIC
        binary: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw  # type: ignore[assignment]
        fh = io.TextIOWrapper(binary, encoding="utf-8")
        try:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise AirbyteRecordError(relative, line_no, f"not valid JSON ({exc.msg})") from exc
                if not isinstance(record, dict):
                    raise AirbyteRecordError(relative, line_no, "a record must be a JSON object")
                yield line_no, record
        except (EOFError, gzip.BadGzipFile, UnicodeDecodeError) as exc:
            raise AirbyteRecordError(relative, 0, f"unreadable file ({exc})") from exc
        while raw.read(1024 * 1024):  # the digest covers every byte, past the last record
            pass
    if digests is not None:
        digests[relative] = sha.hexdigest()


class _Hashing(io.RawIOBase):
    """Reads through `inner`, adding every byte to `sha` on the way."""

    def __init__(self, inner: BinaryIO, sha: Any):
        self._inner, self._sha = inner, sha

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._inner.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self._sha.update(memoryview(buffer)[:n])
        return n or 0

    def close(self) -> None:
        self._inner.close()
        super().close()


def _normalise(record: dict[str, Any], file: str, line: int) -> dict[str, Any]:
    nested = record.pop("_airbyte_data", None)
    if nested is not None:
        if isinstance(nested, str):
            try:
                nested = json.loads(nested)
            except json.JSONDecodeError as exc:
                raise AirbyteRecordError(file, line, "_airbyte_data is not valid JSON") from exc
        if not isinstance(nested, dict):
            raise AirbyteRecordError(file, line, "_airbyte_data must be an object")
        record.update(nested)
    record.pop("_airbyte_loaded_at", None)  # set by the warehouse on load; not part of the record
    raw_id = record.get(RAW_ID)
    if not isinstance(raw_id, str) or not raw_id:
        raise AirbyteRecordError(file, line, f"missing {RAW_ID}")
    record[EXTRACTED_AT] = _extracted_at(record.get(EXTRACTED_AT), file, line)
    record[META] = _meta(record.get(META), file, line)
    generation = record.get(GENERATION_ID)
    if generation is not None and (not isinstance(generation, int) or isinstance(generation, bool)):
        raise AirbyteRecordError(file, line, f"{GENERATION_ID} must be an integer")
    record[SOURCE_FILE] = file
    record[SOURCE_ROW] = line
    return record


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _extracted_at(value: Any, file: str, line: int) -> datetime:
    if isinstance(value, bool) or value is None:
        raise AirbyteRecordError(file, line, f"missing {EXTRACTED_AT}")
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise AirbyteRecordError(file, line, f"{EXTRACTED_AT} is not an ISO 8601 timestamp") from exc
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    raise AirbyteRecordError(file, line, f"{EXTRACTED_AT} is not an ISO 8601 timestamp")


def _meta(value: Any, file: str, line: int) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise AirbyteRecordError(file, line, f"{META} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise AirbyteRecordError(file, line, f"{META} must be an object")
    changes = value.get("changes") or []
    if not isinstance(changes, list) or not all(isinstance(c, dict) for c in changes):
        raise AirbyteRecordError(file, line, f"{META}.changes must be a list of objects")
    return {
        "sync_id": value.get("sync_id"),
        "changes": [{"field": c.get("field"), "change": c.get("change"), "reason": c.get("reason")} for c in changes],
    }


def _infer_schema(rows: list[dict[str, Any]]) -> pa.Schema:
    fixed = {f.name for f in (*AIRBYTE_FIELDS, *LINEAGE_FIELDS)}
    names: dict[str, None] = {}
    for row in rows:
        for name in row:
            if name not in fixed:
                names.setdefault(name)
    fields = []
    for name in names:
        try:
            inferred = pa.array([row.get(name) for row in rows]).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as exc:
            raise ValueError(
                f"cannot infer a type for column {name!r} from the first records ({exc}); pass data_schema"
            ) from exc
        fields.append(pa.field(name, pa.string() if pa.types.is_null(inferred) else inferred))
    return record_schema(pa.schema(fields))


def _to_batch(
    rows: list[dict[str, Any]], schema: pa.Schema, on_unknown_column: Literal["fail", "ignore"]
) -> pa.RecordBatch:
    known = set(schema.names)
    if on_unknown_column == "fail":
        for row in rows:
            unknown = set(row) - known
            if unknown:
                raise AirbyteRecordError(
                    row[SOURCE_FILE], row[SOURCE_ROW], f"column(s) not in the stream schema: {sorted(unknown)}"
                )
    try:
        batch = pa.RecordBatch.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        batch = None
    if batch is not None:
        required = [f.name for f in schema if not f.nullable]
        if not any(batch.column(name).null_count for name in required):
            return batch
    # Find the offending record to name it.
    for row in rows:
        for field in schema:
            try:
                pa.array([row.get(field.name)], type=field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as exc:
                raise AirbyteRecordError(
                    row[SOURCE_FILE],
                    row[SOURCE_ROW],
                    # the value's JSON type, never the value: errors reach logs and run metadata
                    f"column {field.name!r} expects {field.type}, got a JSON {_json_type(row.get(field.name))}",
                ) from exc
            if row.get(field.name) is None and not field.nullable:
                raise AirbyteRecordError(row[SOURCE_FILE], row[SOURCE_ROW], f"column {field.name!r} is required")
    raise AirbyteRecordError(rows[0][SOURCE_FILE], rows[0][SOURCE_ROW], "batch could not be converted to Arrow")
