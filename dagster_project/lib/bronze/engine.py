"""The bronze engine: what a reader produced for one business date -> typed Delta partition + quarantine partition.

One engine loads every source. A reader (`lib/bronze/readers/`, one per kind of input) turns what landed for
the date into checked record batches: the declared columns typed, the lineage of each record, and
`_reasons`, every rule the record breaks (null when it breaks none) with `_raw_record`, the record as
received. The engine sends the good records into the bronze partition and the others into the quarantine
partition, with one lineage builder and one quarantine schema for all sources. Both tables live on the lake
(`Lake.table`): a local folder or an object store.

A partition is rebuilt from everything landed for its date and replaced in one Delta commit per table
(an overwrite of the partition), so a re-run or a backfill yields the same rows and never duplicates. Memory
stays flat: checked records go, group by group, into data files of both tables as they are read
(`delta_files.PartitionFiles`, encoded on a thread of their own while the next group is read), and nothing is
committed until the whole input is read; the files of a load that fails are deleted. Per origin (a file, the
inbox) received = loaded + quarantined + duplicates dropped.

Concurrent loads (other partitions, other runs of the same partition; processes or pods sharing nothing but
the lake) never lose rows:

- Optimistic concurrency, retried with the input read again. Before it opens the reader (which lists what
  landed), an attempt pins the snapshot of both tables it will commit against. Each commit carries a Delta
  transaction identifier of its partition (`txn`, app id `medallion/business_date=<date>`), so it conflicts
  with exactly the commits of the same partition made since its pin; commits of other partitions are
  re-based by delta-rs and go through. An attempt that loses (`CommitFailedError`) is retried whole after a
  jittered backoff: new pins, the landing read again, both tables written again. A partition is a pure
  function of what landed, so the retry writes the right rows; and a load that read an older landing state
  can never replace the rows of a newer one, because the newer one committed after the older one pinned.
  Attempts are bounded (`RetryPolicy`); when every one is lost, `ConcurrentLoadError` names the table and
  the partition.
- Bronze and quarantine of a partition come from the same load. They are two tables, so two commits:
  quarantine first, then bronze, which publishes the load. Both carry the same load number (the partition's
  transaction version, one more than either table held when the load pinned them) and, in their commit
  metadata, the run id and the partition; the quarantine commit also records the load's figures (received,
  loaded, quarantined, duplicates). So a reader of bronze always sees a whole load, and the quarantine of
  that load is the quarantine commit with the same number. A load that stops between its two commits (a
  killed process, a bronze commit lost for good) leaves quarantine one load ahead of bronze:
  `partition_state` shows it, the bronze gate fails on it (unless that load's run is still going), and the
  next load of the partition writes both tables again, repairing the pair, and says so (`LoadResult.repaired`).
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dagster_project.lib.bronze import delta_files
from dagster_project.lib.bronze.contract import LINEAGE_COLUMNS, PARTITION_COLUMN, QUARANTINE_SCHEMA, bronze_schema
from dagster_project.lib.erasure import ForgetList
from dagster_project.lib.lake import Lake
from dagster_project.lib.retry import RetryPolicy
from dagster_project.lib.sources.spec import SourceSpec

if TYPE_CHECKING:
    from deltalake import DeltaTable

# Rows a reader hands over at most, and per typed-contract validation: large enough that a validation's fixed
# cost is small, small enough that what is in flight (a reader's batch, a validation group) stays well in memory.
DEFAULT_BATCH_ROWS = 128 * 1024
# Lineage a reader gives each record; the engine adds the rest (`_source`, `_schema_version`, run columns).
READER_LINEAGE = ("_source_file", "_source_row", "_checksum_sha256", "_received_at")
REASONS = "_reasons"
RAW_RECORD = "_raw_record"
SOURCE_LINE = "_source_line"

# Keys of the engine's commit metadata (Delta `commitInfo`), on both tables' commits of a load.
SOURCE_KEY = "medallion.source"
PARTITION_KEY = "medallion.partition"
LOAD_KEY = "medallion.load"
RUN_KEY = "medallion.run_id"
FIGURES = (
    "received",
    "loaded",
    "quarantined",
    "duplicates",
    "forgotten",
)  # on the quarantine commit, as medallion.<name>
# Commits searched back from the newest for the one of a given load (each is one small read).
LOG_SEARCH_COMMITS = 1000


@dataclass
class OriginLoad:
    """What one origin (a landed file, the webhook inbox, a destination folder) gave the partition."""

    origin: str
    sha256: str | None = None
    loaded: int = 0
    quarantined: int = 0
    duplicates: int = 0  # records the reader dropped as an older or repeated delivery of a key
    forgotten: int = 0  # records naming an erased subject: dropped or redacted (`lib/erasure.py`)
    dropped_as_forgotten: int = 0  # of those, the ones a `delete` source dropped (neither loaded nor quarantined)
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def received(self) -> int:
        return self.loaded + self.quarantined + self.duplicates + self.dropped_as_forgotten


@dataclass(frozen=True)
class PartitionState:
    """Which load last wrote a partition in each table (its load number; None when none did)."""

    source: str
    business_date: dt.date
    bronze_load: int | None
    quarantine_load: int | None

    @property
    def consistent(self) -> bool:
        """Bronze and quarantine of the partition come from the same load."""
        return self.bronze_load == self.quarantine_load

    def describe(self) -> str:
        where = f"{self.source} {self.business_date.isoformat()}"
        if self.consistent:
            return f"{where}: bronze and quarantine from load {self.bronze_load}"
        return (
            f"{where}: quarantine holds load {self.quarantine_load} but bronze load {self.bronze_load} "
            "(a load stopped between its quarantine and bronze commits, or is between them now)"
        )


@dataclass
class LoadResult:
    """The one result of a partition load, whatever the source."""

    source: str
    business_date: str
    origins: list[OriginLoad]
    details: dict[str, Any] = field(default_factory=dict)  # figures only this kind of input has
    run_id: str = ""
    load: int = 0  # the partition's load number, in both tables' commits
    attempts: int = 1  # 1 + commits lost to concurrent loads and retried
    bronze_version: int | None = None
    quarantine_version: int | None = None
    repaired: PartitionState | None = None  # the pair as this load found it, when it came from two loads

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
    def forgotten(self) -> int:
        return sum(o.forgotten for o in self.origins)

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


# Opens a new reader over what has landed by now: called once per attempt, so a retry reads the input again.
OpenReader = Callable[[], AbstractContextManager[Reader]]


class ConcurrentLoadError(RuntimeError):
    """A partition load lost its commit to concurrent loads of the same partition on every attempt."""


@dataclass(frozen=True)
class LoadEvent:
    """A step of a load, for logs and for tests that need to act between two steps.

    `kind`: `reading` (both tables pinned, reader open), `committed` (`table` at `version`) or `conflict`
    (the attempt lost a commit to a concurrent load; the next starts after `delay` seconds)."""

    kind: str
    source: str
    business_date: dt.date
    attempt: int
    load: int
    table: str = ""
    version: int | None = None
    delay: float = 0.0
    error: str = ""

    @property
    def message(self) -> str:
        where = f"{self.source} {self.business_date.isoformat()} load {self.load} (attempt {self.attempt})"
        if self.kind == "committed":
            return f"{where}: {self.table} committed as version {self.version}"
        if self.kind == "conflict":
            return (
                f"{where}: the {self.table} commit lost to a concurrent load of the partition; "
                f"reading the input again in {self.delay:.2f} s ({self.error})"
            )
        return f"{where}: reading the input"


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


def app_id(day: dt.date) -> str:
    """The Delta transaction identifier (`txn` app id) of a partition: the load number is its version."""
    return f"medallion/{PARTITION_COLUMN}={day.isoformat()}"


def stats_configuration(schema: pa.Schema, personal: set[str]) -> dict[str, str]:
    """Table properties that keep column statistics (min/max in the Delta log) for every column but the
    personal ones: the log would otherwise hold raw values of them, out of reach of a row delete."""
    return {"delta.dataSkippingStatsColumns": ",".join(f.name for f in schema if f.name not in personal)}


def table_configuration(spec: SourceSpec, layer: str) -> dict[str, str]:
    """The Delta table properties of a source's bronze or quarantine table."""
    if layer == "quarantine":
        return stats_configuration(QUARANTINE_SCHEMA, {RAW_RECORD})
    return stats_configuration(bronze_schema(spec), set(spec.pii_columns))


def _open_table(uri: str, lake: Lake, schema: pa.Schema, description: str, configuration: dict[str, str]) -> DeltaTable:
    """The Delta table at `uri`, pinned at its current version; created empty (partitioned by date) if absent.

    Creating it apart from the first load lets every load pin a version before it reads its input. Loads
    that race to create it all end with the one table: the losers' commits of version 0 fail, and they
    open the winner's. (Without `max_commit_retries=0` delta-rs would re-base a losing create onto the
    winner's as a second CREATE TABLE commit, which every load that pinned version 0 then loses to.)"""
    from deltalake import CommitProperties, DeltaTable
    from deltalake.exceptions import TableNotFoundError

    options = lake.delta_options()
    try:
        return DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        pass
    try:
        return DeltaTable.create(
            uri,
            schema,
            mode="ignore",
            partition_by=[PARTITION_COLUMN],
            description=description,
            configuration=configuration,
            storage_options=options,
            commit_properties=CommitProperties(max_commit_retries=0),
        )
    except Exception:
        try:
            return DeltaTable(uri, storage_options=options)
        except TableNotFoundError:
            raise  # the create failed for a reason of its own; its error is the one chained here


def _load_number(table: DeltaTable, day: dt.date) -> int | None:
    return table.transaction_version(app_id(day))


class _Lost(Exception):
    """An attempt's commit to `table` lost to a concurrent commit of the same partition."""

    def __init__(self, table: str, error: BaseException):
        super().__init__(f"{table}: {error}")
        self.table, self.error = table, error


def _commit(
    table: DeltaTable,
    name: str,
    files: delta_files.PartitionFiles,
    day: dt.date,
    metadata: dict[str, Any],
    load: int,
    lake: Lake,
    uri: str,
) -> int:
    """Replace the `day` partition of `table` (pinned) with `files`, in one commit carrying `metadata` and the
    partition's transaction id at version `load`; returns the version committed. A commit lost to a
    concurrent one raises `_Lost`."""
    from deltalake.exceptions import CommitFailedError

    pinned = table.version()
    try:
        delta_files.replace_partition(table, files.close(), day, metadata, app_id(day), load)
    except CommitFailedError as exc:
        raise _Lost(name, exc) from exc
    return _committed_version(lake, uri, pinned, day, load)


def _committed_version(lake: Lake, uri: str, pinned: int, day: dt.date, load: int) -> int:
    """The version of the commit of load `load` of the partition, the first after `pinned` that carries it
    (a load number is committed once per table and partition: a second commit of it conflicts)."""
    import obstore
    from obstore.exceptions import NotFoundError

    log = f"{lake.relative(uri)}/_delta_log"
    version = pinned + 1
    while True:
        try:
            data = bytes(obstore.get(lake.store, f"{log}/{version:020d}.json").bytes())
        except NotFoundError:
            raise RuntimeError(f"{uri}: the commit of load {load} of {day.isoformat()} is not in the log") from None
        info = _commit_info(data)
        if info.get(PARTITION_KEY) == day.isoformat() and info.get(LOAD_KEY) == load:
            return version
        version += 1


def load_partition(
    spec: SourceSpec,
    reader: Reader | OpenReader,
    *,
    lake: Lake,
    run_id: str,
    business_date: dt.date | str | None = None,
    ingested_at: dt.datetime | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    retry: RetryPolicy = RetryPolicy(),
    on_event: Callable[[LoadEvent], None] | None = None,
    forget: ForgetList | None = None,
) -> LoadResult:
    """Replace the bronze partition of `spec` for a business date, and its quarantine partition, with what
    the reader reads, on `lake`.

    `reader` is either a function that opens a new reader over what has landed by now (then
    `business_date` is required), which lets a load that lost to a concurrent commit read its input again
    and retry; or a reader, read once: a lost commit then raises `ConcurrentLoadError` at once.
    `forget`, the lake's forget list: records naming an erased subject are dropped or redacted
    (`lib/erasure.py`), in bronze and in quarantine, and counted as `forgotten`.
    """
    if callable(reader):
        if business_date is None:
            raise TypeError("load_partition: give the business_date of the partition the reader opener reads")
        open_reader, reusable = reader, True
        day = business_date if isinstance(business_date, dt.date) else dt.date.fromisoformat(business_date)
    else:
        open_reader, reusable, day = (lambda: nullcontext(reader)), False, reader.business_date
    uris = {"bronze": lake.table("bronze", spec.name), "quarantine": lake.table("quarantine", spec.name)}
    rng = random.Random()
    found: PartitionState | None = None

    for attempt in range(1, retry.attempts + 1):
        # Pinned before the reader lists the input: see the module docstring.
        bronze = _open_table(
            uris["bronze"],
            lake,
            bronze_schema(spec),
            f"{spec.description} Typed, with lineage.",
            table_configuration(spec, "bronze"),
        )
        quarantine = _open_table(
            uris["quarantine"],
            lake,
            QUARANTINE_SCHEMA,
            f"Records of source {spec.name} that broke its contract.",
            table_configuration(spec, "quarantine"),
        )
        pinned = PartitionState(spec.name, day, _load_number(bronze, day), _load_number(quarantine, day))
        if found is None:
            found = pinned
        load = max(pinned.bronze_load or 0, pinned.quarantine_load or 0) + 1

        def emit(kind: str, **values: Any) -> None:
            if on_event is not None:
                on_event(LoadEvent(kind, spec.name, day, attempt, load, **values))  # noqa: B023

        try:
            with open_reader() as opened:
                if opened.business_date != day:
                    raise ValueError(f"{spec.name}: the reader reads {opened.business_date}, not {day}")
                emit("reading")
                versions = _load_once(
                    spec,
                    opened,
                    lake,
                    uris,
                    bronze,
                    quarantine,
                    day,
                    load,
                    run_id,
                    ingested_at,
                    batch_rows,
                    emit,
                    forget,
                )
        except _Lost as lost:
            table = f"{lost.table}.{spec.name}"
            if not reusable:
                raise ConcurrentLoadError(
                    f"{table} partition {day.isoformat()}: the commit lost to a concurrent load of the same "
                    "partition, and this reader cannot read its input again; load it with a reader opener"
                ) from lost.error
            if attempt == retry.attempts:
                raise ConcurrentLoadError(
                    f"{table} partition {day.isoformat()}: all {retry.attempts} attempts lost their commit to "
                    f"concurrent loads of the same partition (last: {lost.error}); bronze holds the last load "
                    "that won, and the next load of the partition writes both tables again"
                ) from lost.error
            delay = retry.delay(attempt, rng)
            emit("conflict", table=lost.table, delay=delay, error=str(lost.error).splitlines()[0])
            retry.sleep(delay)
            continue
        return LoadResult(
            source=spec.name,
            business_date=day.isoformat(),
            origins=opened.origins,
            details=opened.details(),
            run_id=run_id,
            load=load,
            attempts=attempt,
            bronze_version=versions["bronze"],
            quarantine_version=versions["quarantine"],
            repaired=None if found.consistent else found,
        )
    raise AssertionError("unreachable: the last attempt returns or raises")


def _load_once(
    spec: SourceSpec,
    reader: Reader,
    lake: Lake,
    uris: dict[str, str],
    bronze: DeltaTable,
    quarantine: DeltaTable,
    day: dt.date,
    load: int,
    run_id: str,
    ingested_at: dt.datetime | None,
    batch_rows: int,
    emit: Callable[..., None],
    forget: ForgetList | None = None,
) -> dict[str, int]:
    """One attempt: read and check every record into new data files of both tables (good, quarantined), then
    commit the quarantine files, then the bronze files; returns the version each table committed.

    Both commits come after the whole input is read, so an input error (a ContractError naming the file,
    say) commits nothing, and the files written so far are deleted. Bronze rows are validated against the
    typed contract in groups of at least `batch_rows` rows (a validation costs about the same whatever its
    size, and readers hand over smaller batches than that) before they go to the writer."""
    import polars as pl

    from dagster_project.lib.bronze.contract import pandera_schema

    lineage = _Lineage(spec, day, ingested_at or dt.datetime.now(dt.UTC), run_id)
    schema = writer_schema(spec)
    contract = pandera_schema(spec)
    stamp = {SOURCE_KEY: spec.name, PARTITION_KEY: day.isoformat(), LOAD_KEY: load, RUN_KEY: run_id}
    files = {
        "bronze": delta_files.PartitionFiles(bronze, f"bronze.{spec.name}", uris["bronze"], lake, schema, day),
        "quarantine": delta_files.PartitionFiles(
            quarantine, f"quarantine.{spec.name}", uris["quarantine"], lake, QUARANTINE_SCHEMA, day
        ),
    }
    bronze_columns = [f.name for f in schema if f.name != PARTITION_COLUMN]
    quarantine_columns = [f.name for f in QUARANTINE_SCHEMA if f.name != PARTITION_COLUMN]
    writer = delta_files.BackgroundWriter(files["bronze"])
    uncommitted = set(files)

    def validated(group: list[pa.Table]) -> None:
        rows = pa.concat_tables(group)
        contract.validate(pl.from_arrow(rows, rechunk=False))
        writer.put(rows.select(bronze_columns))

    def quarantine_written(group: list[pa.Table]) -> None:
        # Quarantined records are few per batch: gathered into row groups of a useful size.
        files["quarantine"].write(pa.concat_tables(group).select(quarantine_columns))

    batches = reader.read(batch_rows)
    try:
        pending: list[pa.Table] = []
        pending_rows = 0
        quarantined: list[pa.Table] = []
        quarantined_rows = 0
        for origin, batch in batches:
            if forget:
                before = batch.num_rows
                batch, forgotten = forget.apply(spec, batch)
                origin.forgotten += forgotten
                origin.dropped_as_forgotten += before - batch.num_rows
            if not batch.num_rows:
                continue
            reasons = batch.column(REASONS)
            bad = None
            if reasons.null_count < len(reasons):  # some records broke a rule
                bad = pc.is_valid(reasons)
                rejected = batch.filter(bad)
                origin.quarantined += rejected.num_rows
                origin.reasons.update(pc.list_flatten(rejected.column(REASONS)).to_pylist())
                quarantined.append(pa.Table.from_batches([lineage.quarantine(rejected)]))
                quarantined_rows += rejected.num_rows
                if quarantined_rows >= batch_rows:
                    quarantine_written(quarantined)
                    quarantined, quarantined_rows = [], 0
            if reasons.null_count:  # some records are good
                good = pa.Table.from_batches([lineage.bronze(batch, schema)])
                if bad is not None:
                    good = _without(good, bad)
                origin.loaded += good.num_rows
                pending.append(good)
                pending_rows += good.num_rows
                if pending_rows >= batch_rows:
                    validated(pending)
                    pending, pending_rows = [], 0
        if pending:
            validated(pending)
        if quarantined:
            quarantine_written(quarantined)
        writer.finish()
        figures = {
            "received": sum(o.received for o in reader.origins),
            "loaded": sum(o.loaded for o in reader.origins),
            "quarantined": sum(o.quarantined for o in reader.origins),
            "duplicates": sum(o.duplicates for o in reader.origins),
            "forgotten": sum(o.forgotten for o in reader.origins),
        }
        versions: dict[str, int] = {}
        versions["quarantine"] = _commit(
            quarantine,
            "quarantine",
            files["quarantine"],
            day,
            {**stamp, **{f"medallion.{k}": v for k, v in figures.items()}},
            load,
            lake,
            uris["quarantine"],
        )
        uncommitted.discard("quarantine")
        emit("committed", table="quarantine", version=versions["quarantine"])
        versions["bronze"] = _commit(bronze, "bronze", files["bronze"], day, stamp, load, lake, uris["bronze"])
        uncommitted.discard("bronze")
        emit("committed", table="bronze", version=versions["bronze"])
        return versions
    finally:
        # A reader stopped early frees what it holds now (a query running ahead, a connection), not when the
        # garbage collector gets to it.
        close = getattr(batches, "close", None)
        if close is not None:
            close()
        writer.abort()
        for name in uncommitted:
            files[name].discard()


# Bad records of a batch up to which the good ones are kept as slices of it rather than copied (`_without`).
MAX_SLICED_OUT = 1024


def _without(table: pa.Table, bad: pa.BooleanArray) -> pa.Table:
    """The rows of `table` (one batch) where `bad` is false. A batch of a real file has a handful of bad records
    among 128K good ones: the good ones are kept as zero-copy slices of the batch between the bad ones (a
    filter would copy every good value to drop a few; it cost the bronze hop a sixth of its time). Many bad
    records: one filtered copy, rather than thousands of tiny slices."""
    positions = np.flatnonzero(bad.to_numpy(zero_copy_only=False))
    if len(positions) > MAX_SLICED_OUT:
        return table.filter(pc.invert(bad))
    starts = np.concatenate(([0], positions + 1))
    ends = np.concatenate((positions, [table.num_rows]))
    kept = [table.slice(int(a), int(b - a)) for a, b in zip(starts, ends, strict=True) if b > a]
    return pa.concat_tables(kept) if kept else table.slice(0, 0)


def partition_state(spec: SourceSpec, lake: Lake, business_date: dt.date) -> PartitionState:
    """Which load last wrote the partition in bronze and in quarantine.

    Bronze is read first: a load commits quarantine before bronze, so any load seen in bronze has its
    quarantine commit in the quarantine read after it."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    loads: list[int | None] = []
    for layer in ("bronze", "quarantine"):
        try:
            table = DeltaTable(lake.table(layer, spec.name), storage_options=lake.delta_options())
        except TableNotFoundError:
            loads.append(None)
            continue
        loads.append(_load_number(table, business_date))
    return PartitionState(spec.name, business_date, loads[0], loads[1])


@dataclass(frozen=True)
class LoadCommit:
    """One table's commit of a partition load, as its commit metadata records it."""

    table: str
    version: int
    run_id: str | None
    figures: dict[str, int]  # on the quarantine commit: received, loaded, quarantined, duplicates


def find_load_commit(
    spec: SourceSpec, lake: Lake, layer: str, business_date: dt.date, load: int, *, search: int = LOG_SEARCH_COMMITS
) -> LoadCommit | None:
    """The commit of load number `load` of a partition in `layer` (`bronze` or `quarantine`), searched from
    the newest commit back over at most `search` commits; None if not found there.

    The commit files are read through the lake's object store rather than `DeltaTable.history`, which
    (deltalake 1.6) holds the GIL through its reads and so stalls every other thread of the process."""
    import obstore
    from deltalake import DeltaTable
    from obstore.exceptions import NotFoundError

    uri = lake.table(layer, spec.name)
    newest = DeltaTable(uri, storage_options=lake.delta_options()).version()
    log = f"{lake.relative(uri)}/_delta_log"
    for version in range(newest, max(-1, newest - search), -1):
        try:
            data = bytes(obstore.get(lake.store, f"{log}/{version:020d}.json").bytes())
        except NotFoundError:
            return None  # older commits were cleaned up (log retention)
        info = _commit_info(data)
        if info.get(PARTITION_KEY) == business_date.isoformat() and info.get(LOAD_KEY) == load:
            figures = {k: int(info[f"medallion.{k}"]) for k in FIGURES if f"medallion.{k}" in info}
            return LoadCommit(f"{layer}.{spec.name}", version, info.get(RUN_KEY), figures)
    return None


def _commit_info(data: bytes) -> dict[str, Any]:
    for line in data.splitlines():
        action = json.loads(line) if line.strip() else {}
        if "commitInfo" in action:
            return action["commitInfo"]
    return {}
