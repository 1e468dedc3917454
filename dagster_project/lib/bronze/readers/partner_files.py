"""Reader for partner files: the delimited text files landed for a business date.

Every file is first counted by a scan of its bytes that does not use the parser (`csv_records.scan`: one
streaming pass, quote-aware, memory flat whatever the line length). The count is what the file holds; the
reader then returns exactly one row, loaded or quarantined, for each counted record, and checks that it did
(`RecordCountMismatch` otherwise: the load fails and nothing of it is committed).

- A *plain* file (the scan's definition: the header's number of fields on every line, RFC 4180 quoting,
  `\\n` or `\\r\\n` line ends, UTF-8, no line over 1 MiB), nearly every file, is parsed by DuckDB in batches,
  and the source's contract SQL (`contract.select_sql`) types every column and lists every rule a record
  breaks, in one vectorised query. DuckDB starts on the file while the scan counts it, on a thread of its own
  (the scan takes about a third of DuckDB's time); what it reads is handed over only once the scan has
  checked the bytes and found the file plain, and is dropped otherwise.
- Any other file is split into records and fields by `csv_records` itself, one record at a time, and the same
  contract SQL types the fields. A record that cannot be split into the header's fields (too many or too
  few, text after a closing quote, a quote that never closes), is not UTF-8, or is longer than
  `csv_records.MAX_RECORD_BYTES` is quarantined with that reason and its line number. DuckDB's CSV reader is
  never given such a file: it loses lines longer than its buffer without a trace, loads a line with extra
  empty trailing fields as good, fails a whole file over a lone carriage return, and keeps only 10,000
  characters of a rejected line with its invalid bytes shown as `?`.

`_raw_record` of a quarantined record is its text exactly when it is valid UTF-8 and whole (up to 16 MiB);
otherwise it shows what can be shown (bytes that are not UTF-8 as `\\xNN`, the first 64 KiB of a record cut
short) followed by a note with the record's length in bytes and the SHA-256 of its bytes, which identify it
in the landed file, kept byte for byte (`csv_records.shown`). A record that breaks a rule of the contract
(rather than the file's structure) is shown re-rendered as a CSV line from its fields.

Files are read where the manifests say they landed, relative to the lake root. On a local lake the landed
file itself is read. On an object store each file is first streamed to a local temporary file (one GET in
1 MiB chunks), read, and deleted. The other way, DuckDB
reading s3:// itself through httpfs, was measured against the loopback S3 server (in its own process) and
lost: with this reader's query, 9.9 s against 9.3 s for 1M rows (106 MB; 9.0 s from a local lake) and 44 s
against 28 s for 3M rows (322 MB; 30 s local), with about 70 MB more memory; a bare CSV scan showed it
starker (2.0-2.5 s against 0.5-0.7 s at 106 MB, 12.9 s against 0.7 s at 322 MB). httpfs fetches a CSV in
many ranged requests, each paying the store's first-byte latency, where the download is one sequential
stream. The cost is local disk for one landed file at a time.

Before any record of a file is handed over, the bytes read are checked against the sha256 its manifest
recorded when it landed (`LandedFileChanged` otherwise, naming the file and both digests: the load fails and
nothing of it is committed). The digest is taken during the counting scan, which reads every byte anyway, so
a large file is not read once more for it. So `_checksum_sha256` in bronze is always the digest of the bytes
the rows were read from, and equal to the manifest's. On a local lake DuckDB reads the landed file itself
(alongside the scan): the check catches a file changed at rest, while a file rewritten during the load would
also have to keep its record count to pass the count check after it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import duckdb
import numpy as np
import pyarrow as pa

from dagster_project.lib.bronze.contract import ContractError, resolve_columns, select_sql
from dagster_project.lib.bronze.engine import RAW_RECORD, REASONS, SOURCE_LINE, OriginLoad, constant
from dagster_project.lib.bronze.readers import csv_records
from dagster_project.lib.intake.landing import Manifest, landed_key, local_copy
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.spec import SourceSpec

_FILE_CONSTANTS = {
    "_source_file": pa.dictionary(pa.int32(), pa.string()),
    "_checksum_sha256": pa.dictionary(pa.int32(), pa.string()),
    "_received_at": pa.timestamp("us", tz="UTC"),
}
# The longest text DuckDB keeps of a line it rejects.
_REJECTED_LINE_CHARS = 10_000
# Batches the query may run ahead of the load (`_Prefetch`): enough to cover the scan of a plain file (about a
# sixth of DuckDB's time), few enough to stay small (a batch of 128K customer records: about 15 MB).
_PREFETCH_BATCHES = 2


class RecordCountMismatch(RuntimeError):
    """The parser returned another number of records than the file holds by the reader's own count."""


class LandedFileChanged(ValueError):
    """A landed file's bytes no longer hash to the sha256 its manifest recorded: landing is immutable, so the
    file was changed (or damaged) after it landed. The message names the file and both digests, never content."""


class _Digesting:
    """A binary stream read through, every byte added to a sha256 on the way."""

    def __init__(self, inner: BinaryIO):
        self._inner, self.sha256 = inner, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self.sha256.update(data)
        return data


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _csv_source(delimiter: str, header: list[str], index: int) -> str:
    # Every column is read as text, named from the header, with no dialect sniffing: nothing is lost to
    # type guessing. Lines the parser cannot split into the header's columns go to a rejects table with
    # their line number and text instead of failing the file (a plain file has none). Buffers of 4 MiB
    # (twice the longest line the parser accepts) instead of the default 32 MiB per thread: as fast, and
    # about 90 MB less memory.
    columns = ", ".join(f"{_literal(name)}: 'VARCHAR'" for name in header)
    return (
        f"read_csv(?, header=true, auto_detect=false, columns={{{columns}}}, delim={_literal(delimiter)}, "
        f"quote='\"', escape='\"', strict_mode=true, buffer_size=4194304, ignore_errors=true, store_rejects=true, "
        f"rejects_table='rejects_{index}', rejects_scan='rejects_scan_{index}')"
    )


class PartnerFilesReader:
    """The landed files of one partition (their manifests), in the order given, read from `lake`."""

    def __init__(self, spec: SourceSpec, manifests: list[Manifest], business_date: str, *, lake: Lake):
        for manifest in manifests:
            if manifest.business_date != business_date:
                raise ValueError(f"{manifest.file_name}: belongs to {manifest.business_date}, not {business_date}")
        self.spec, self.manifests, self.lake = spec, manifests, lake
        self.business_date = dt.date.fromisoformat(business_date)
        self.origins: list[OriginLoad] = []
        self.counted: dict[str, int] = {}  # file -> records by the reader's own count
        self.read_by: dict[str, str] = {}  # file -> which parser read it, and why

    def details(self) -> dict[str, Any]:
        return {
            "files": [
                {
                    "file": o.origin,
                    "records": self.counted.get(o.origin),
                    "received": o.received,
                    "loaded": o.loaded,
                    "quarantined": o.quarantined,
                    "read_by": self.read_by.get(o.origin),
                }
                for o in self.origins
            ],
            "checksums_sha256": [o.sha256 for o in self.origins],
        }

    def read(self, batch_rows: int) -> Iterator[tuple[OriginLoad, pa.RecordBatch]]:
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")  # timestamps without an offset are read as UTC
            _share_cores(con)
            for index, manifest in enumerate(self.manifests):
                origin = OriginLoad(manifest.file_name, sha256=manifest.sha256)
                self.origins.append(origin)
                key = landed_key(self.lake, manifest)
                # Checked while the scan reads the copy (`_read_file`): the copy is private to this load.
                with local_copy(self.lake, key) as path:
                    yield from self._read_file(con, index, path, key, manifest, origin, batch_rows)
        finally:
            con.close()

    def _read_file(
        self,
        con: duckdb.DuckDBPyConnection,
        index: int,
        path: Path,
        key: str,
        manifest: Manifest,
        origin: OriginLoad,
        batch_rows: int,
    ) -> Iterator[tuple[OriginLoad, pa.RecordBatch]]:
        delimiter = self.spec.files.delimiter
        # The header comes first, so that DuckDB can start reading the file while the scan counts it (most
        # files are plain); nothing DuckDB reads is used before the scan has checked the bytes and found the
        # file plain. A header that cannot be read is reported after the bytes are checked, as before.
        header: list[str] = []
        present: list[str] = []
        header_error: Exception | None = None
        with path.open("rb") as fh:
            try:
                header = csv_records.read_header(fh, delimiter)
                present = resolve_columns(self.spec, header, manifest.file_name)
            except csv_records.HeaderError as exc:
                header_error = ContractError(f"{manifest.file_name}: {exc}")
            except ContractError as exc:
                header_error = exc
        ahead = None if header_error else self._start_plain(con, index, path, header, present, batch_rows)
        try:
            with path.open("rb") as fh:
                digesting = _Digesting(fh)
                scanned = csv_records.scan(digesting, delimiter)  # reads to the end: the digest covers every byte
            actual = digesting.sha256.hexdigest()
            if actual != manifest.sha256:
                raise LandedFileChanged(
                    f"{key}: the landed bytes changed since the file landed: they hash to sha256 {actual}, its "
                    f"manifest records {manifest.sha256}; nothing of this load is committed. Landing is immutable: "
                    "restore the file as it landed, or deliver the corrected content as a new file (next sequence)"
                )
            if scanned.empty:  # not even a header: no record
                self.counted[manifest.file_name], self.read_by[manifest.file_name] = 0, "empty file"
                return
            if header_error is not None:
                raise header_error
            values = {
                "_source_file": manifest.file_name,
                "_checksum_sha256": manifest.sha256,
                "_received_at": dt.datetime.fromisoformat(manifest.received_at),
            }
            rows = 0
            found: list[int] = []
            if scanned.plain:
                how = "DuckDB (a plain file)"
                if ahead is None:
                    ahead = self._start_plain(con, index, path, header, present, batch_rows, speculative=False)
                batches = self._plain(con, index, ahead)
            else:
                how = f"record by record ({scanned.why_not_plain})"
                if ahead is not None:
                    ahead.close()  # DuckDB must not read this file: what it read is dropped
                batches = self._record_by_record(con, index, path, header, present, batch_rows, found)
            self.read_by[manifest.file_name] = how
            for batch, source_rows, lines in batches:
                rows += batch.num_rows
                yield origin, _with_lineage(batch, values, source_rows, lines)
        finally:
            if ahead is not None:
                ahead.close()
        # A plain file is counted by the scan, independently of DuckDB; any other file by the splitter that
        # returns one row per record it finds.
        counted = scanned.records if scanned.plain else len(found)
        self.counted[manifest.file_name] = counted
        if rows != counted:
            raise RecordCountMismatch(
                f"{manifest.file_name}: the file holds {counted} records (counted from its bytes), but the "
                f"parser returned {rows} loaded or rejected; nothing of this load is committed"
            )

    def _start_plain(
        self,
        con: duckdb.DuckDBPyConnection,
        index: int,
        path: Path,
        header: list[str],
        present: list[str],
        batch_rows: int,
        *,
        speculative: bool = True,
    ) -> _Prefetch | None:
        """Start DuckDB's typed read of the file. Speculative (before the scan has found the file plain): an
        error is kept for when the batches are read, and a query DuckDB refuses at once gives None."""
        query = select_sql(self.spec, present, source=_csv_source(self.spec.files.delimiter, header, index))
        try:
            # `execute(...).to_arrow_reader` streams; on DuckDB 1.5 a relation's (`con.sql(...)`) reader
            # materializes the whole result first (3M rows: 729 MB before the first batch instead of 170 MB).
            result = con.execute(query, [str(path)]).to_arrow_reader(batch_rows)
        except duckdb.Error:
            if not speculative:
                raise
            return None
        return _Prefetch(result)

    def _plain(
        self, con: duckdb.DuckDBPyConnection, index: int, ahead: _Prefetch
    ) -> Iterator[tuple[pa.RecordBatch, pa.Array | None, pa.Array | None]]:
        row = 0
        for batch in ahead:
            numbers = pa.array(np.arange(row + 1, row + batch.num_rows + 1, dtype=np.int64))
            row += batch.num_rows
            yield batch, numbers, None
        ahead.close()
        unparsed = _rejected_lines(con, index)
        if unparsed is not None:
            yield unparsed, None, unparsed.column("line")

    def _record_by_record(
        self,
        con: duckdb.DuckDBPyConnection,
        index: int,
        path: Path,
        header: list[str],
        present: list[str],
        batch_rows: int,
        count: list[int],
    ) -> Iterator[tuple[pa.RecordBatch, pa.Array | None, pa.Array | None]]:
        """Split the file into records and fields here (one item appended to `count` per record); type the
        fields with the contract SQL in batches."""
        delimiter = self.spec.files.delimiter
        width = len(header)
        fields: list[list[str | None]] = [[] for _ in header]
        broken: dict[str, list[Any]] = {"line": [], RAW_RECORD: [], REASONS: []}
        row = 0  # ordinal among the records that could be split, as DuckDB numbers the rows it reads

        def flush() -> Iterator[tuple[pa.RecordBatch, pa.Array | None, pa.Array | None]]:
            nonlocal fields, broken, row
            if fields[0]:
                yield from self._typed(con, index, header, present, fields, row)
                row += len(fields[0])
                fields = [[] for _ in header]
            if broken["line"]:
                yield _broken_batch(self.spec, broken), None, pa.array(broken["line"], pa.int64())
                broken = {"line": [], RAW_RECORD: [], REASONS: []}

        with path.open("rb") as fh:
            records = csv_records.records(fh, delimiter, max_bytes=csv_records.MAX_RECORD_BYTES)
            next(records, None)  # the header
            for record in records:
                count.append(1)
                reason = _structural_reason(record, delimiter, width, fields)
                if reason is not None:
                    broken["line"].append(record.line)
                    broken[RAW_RECORD].append(csv_records.shown(record))
                    broken[REASONS].append([f"malformed CSV line: {reason}"])
                if len(fields[0]) + len(broken["line"]) >= batch_rows:
                    yield from flush()
        yield from flush()

    def _typed(
        self,
        con: duckdb.DuckDBPyConnection,
        index: int,
        header: list[str],
        present: list[str],
        fields: list[list[str | None]],
        first_row: int,
    ) -> Iterator[tuple[pa.RecordBatch, pa.Array | None, pa.Array | None]]:
        table = pa.table({f"c{i}": pa.array(values, pa.string()) for i, values in enumerate(fields)})
        name = f"records_{index}"
        con.register(name, table.rename_columns(header))
        try:
            typed = con.sql(select_sql(self.spec, present, source=name)).to_arrow_table()
        finally:
            con.unregister(name)
        numbers = pa.array(np.arange(first_row + 1, first_row + typed.num_rows + 1, dtype=np.int64))
        yield typed.combine_chunks().to_batches()[0], numbers, None


def _share_cores(con: duckdb.DuckDBPyConnection) -> None:
    """Leave one of the CPUs DuckDB would use (its default honours cgroup limits) to the load's own threads:
    contract validation, and Parquet encoding of the batches before. The query runs ahead of the load on a
    thread of its own (`_Prefetch`). On two CPUs that is one DuckDB thread: DuckDB's threads on a streamed
    result cost about 40% more CPU there (1M rows: 2.2 s against 1.5 s), fewer with a streaming buffer that
    lets them run ahead (1.7 s with 64 MB)."""
    cpus = int(con.execute("SELECT current_setting('threads')").fetchone()[0])  # type: ignore[index]
    threads = max(1, cpus - 1)
    con.execute(f"SET threads = {threads}")
    if threads > 1:
        con.execute("SET streaming_buffer_size = '64MB'")


class _Prefetch:
    """The batches of a query result, read on a thread of their own up to `_PREFETCH_BATCHES` ahead: the
    query runs (without the GIL) while the load checks and hands on the batches before, or while the scan
    counts the file. `close` (idempotent) stops the thread and waits for it, which frees the connection."""

    _END = object()

    def __init__(self, batches: pa.RecordBatchReader):
        self._batches = batches
        self._ready: queue.Queue[Any] = queue.Queue(maxsize=_PREFETCH_BATCHES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="medallion-csv-query", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for batch in self._batches:
                if self._stop.is_set():
                    return
                self._ready.put(batch)
            self._ready.put(self._END)
        except BaseException as exc:  # noqa: BLE001 - raised on the reading side
            self._ready.put(exc)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while (item := self._ready.get()) is not self._END:
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a put, then let the thread see the stop
            try:
                self._ready.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


def _structural_reason(
    record: csv_records.Record, delimiter: str, width: int, fields: list[list[str | None]]
) -> str | None:
    """Why `record` cannot be split into `width` text fields; None when it can, its fields then appended to
    `fields` (one list per column)."""
    if record.cut:
        return f"longer than {csv_records.MAX_RECORD_BYTES} bytes"
    split, error = csv_records.split_fields(record.data, delimiter)
    if error is not None:
        return error
    if len(split) != width:
        return ("too many" if len(split) > width else "missing") + " columns"
    try:
        values = [None if value is None else value.decode() for value in split]
    except UnicodeDecodeError:
        return "not valid UTF-8"
    for column, value in zip(fields, values, strict=True):
        column.append(value)
    return None


def _broken_batch(spec: SourceSpec, broken: dict[str, list[Any]]) -> pa.RecordBatch:
    """Records that could not be split into fields: every declared column null, the reason and the record."""
    from dagster_project.lib.bronze.contract import data_fields

    n = len(broken["line"])
    columns = {f.name: pa.nulls(n, f.type) for f in data_fields(spec)}
    columns[REASONS] = pa.array(broken[REASONS], pa.list_(pa.string()))
    columns[RAW_RECORD] = pa.array(broken[RAW_RECORD], pa.string())
    return pa.RecordBatch.from_pydict(columns)


def _with_lineage(
    batch: pa.RecordBatch, values: dict[str, Any], rows: pa.Array | None, lines: pa.Array | None
) -> pa.RecordBatch:
    n = batch.num_rows
    extra = {name: constant(values[name], type_, n) for name, type_ in _FILE_CONSTANTS.items()}
    extra["_source_row"] = rows if rows is not None else pa.nulls(n, pa.int64())
    if lines is not None:
        extra[SOURCE_LINE] = lines
    arrays = [*(batch.column(name) for name in batch.schema.names if name != "line"), *extra.values()]
    names = [name for name in batch.schema.names if name != "line"]
    return pa.RecordBatch.from_arrays(arrays, names=[*names, *extra])


def _rejected_lines(con: duckdb.DuckDBPyConnection, index: int) -> pa.RecordBatch | None:
    """Lines the CSV parser could not read, one row per line with every parser error."""
    table = con.sql(
        f"""
        SELECT line::BIGINT AS line,
               CASE WHEN length(any_value(csv_line)) >= {_REJECTED_LINE_CHARS}
                    THEN any_value(csv_line) || chr(10) || '[only the first {_REJECTED_LINE_CHARS} characters '
                         || 'of the line are shown: the CSV parser keeps no more of a line it rejects]'
                    ELSE any_value(trim(csv_line, chr(13) || chr(10))) END AS {RAW_RECORD},
               list(DISTINCT reason ORDER BY reason) AS {REASONS}
        FROM (SELECT *, 'malformed CSV line: ' || lower(error_type) AS reason FROM rejects_{index})
        GROUP BY line
        ORDER BY line
        """
    ).to_arrow_table()
    return table.combine_chunks().to_batches()[0] if table.num_rows else None
