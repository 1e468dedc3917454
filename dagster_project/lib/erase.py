"""Carrying out erasure requests across everything the platform writes (`medallion erase`, the erase job).

The steps, each safe to run again (a request interrupted at any point is finished by the next run):

1. Record the subjects in the forget list (`lib/erasure.py`): from then on every bronze load applies it.
2. Landing: every landed file that names a forgotten subject is rewritten without it, with a manifest that
   records the redaction and the checksum it replaced (partner files and Airbyte record files).
3. The webhook inbox: stored bodies lose the subjects' e-mail addresses.
4. Bronze and quarantine: every partition fed by a rewritten file or event is loaded again by the bronze
   engine, from the rewritten input.
5. History: old Delta versions of those tables are vacuumed at once and their log is cut to a checkpoint of
   the current version, so no earlier file or log entry keeps a raw value; PII columns keep no column
   statistics in the log from then on.

Silver, gold and the reverse ETL target are rebuilt from bronze afterwards (the erase job runs dbt with a full
refresh and the reverse ETL sync, then `purge_history` on every silver and gold table). Every step works from
the forget list's hashes, never from raw identifiers.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import obstore

from dagster_project.lib import retention
from dagster_project.lib.bronze import engine
from dagster_project.lib.erasure import ForgetList
from dagster_project.lib.intake import landing
from dagster_project.lib.intake.inbox import Inbox
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.registry import SOURCES
from dagster_project.lib.sources.spec import AirbyteStream, PartnerFiles, SourceSpec, WebhookEvents

# Delta's own default, put back after a purge: the log keeps 30 days of versions between erasures.
LOG_RETENTION = "interval 30 days"


@dataclass
class Receipt:
    """What an erasure run did, in figures: it names no subject (hashes of the request at most)."""

    request_id: str
    subjects: int = 0  # subjects added to the forget list by this request
    forget_list: int = 0  # subjects in the forget list after it
    files_rewritten: dict[str, int] = field(default_factory=dict)  # per source
    records_erased: dict[str, int] = field(default_factory=dict)  # per source, in landing and the inbox
    partitions_reloaded: dict[str, list[str]] = field(default_factory=dict)
    tables_purged: dict[str, int] = field(default_factory=dict)  # table -> data files removed
    remaining: dict[str, int] = field(default_factory=dict)  # table -> records still naming a subject
    notes: list[str] = field(default_factory=list)

    def count(self, source: str, files: int, records: int) -> None:
        self.files_rewritten[source] = self.files_rewritten.get(source, 0) + files
        self.records_erased[source] = self.records_erased.get(source, 0) + records

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "subjects": self.subjects,
            "forget_list": self.forget_list,
            "files_rewritten": self.files_rewritten,
            "records_erased": self.records_erased,
            "partitions_reloaded": self.partitions_reloaded,
            "tables_purged": self.tables_purged,
            "remaining": self.remaining,
            "notes": self.notes,
        }

    def render(self) -> str:
        lines = [
            f"Erasure {self.request_id}: {self.subjects} subject(s) added, {self.forget_list} in the forget list",
        ]
        for source in sorted(set(self.files_rewritten) | set(self.records_erased)):
            lines.append(
                f"  {source}: {self.records_erased.get(source, 0)} record(s) erased, "
                f"{self.files_rewritten.get(source, 0)} landed file(s) rewritten"
            )
        for source, dates in sorted(self.partitions_reloaded.items()):
            lines.append(f"  bronze.{source}: {len(dates)} partition(s) reloaded ({', '.join(dates)})")
        for table, removed in sorted(self.tables_purged.items()):
            lines.append(f"  {table}: history purged, {removed} old file(s) removed")
        for table, left in sorted(self.remaining.items()):
            lines.append(f"  {table}: {left} record(s) still name an erased subject")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


def erase_inputs(
    lake: Lake,
    forget: ForgetList,
    receipt: Receipt,
    *,
    inbox: Inbox | None,
    scratch: Path | None = None,
    only: tuple[str, str] | None = None,
) -> dict[str, set[str]]:
    """Steps 2 and 3: rewrite landed files and inbox bodies that name a forgotten subject; returns the
    bronze partitions (source -> business dates) whose input changed. `only`, a (source, business date):
    that partition's input alone (a file delivered after its subject was erased)."""
    affected: dict[str, set[str]] = {}
    for spec in SOURCES.values():
        if not spec.subject_columns or (only and only[0] != spec.name):
            continue
        reader = spec.reader
        if isinstance(reader, PartnerFiles):
            dates = _rewrite_partner_files(lake, spec, forget, receipt, scratch, only[1] if only else None)
            if not only:
                dates |= _stored_partitions_naming_subjects(lake, spec, forget, expired_dates(lake, spec.name))
        elif isinstance(reader, AirbyteStream):
            dates = _rewrite_record_files(lake, spec, forget, receipt, scratch)
        elif isinstance(reader, WebhookEvents):
            if inbox is None:
                receipt.notes.append(f"{spec.name}: no webhook inbox given, its events were not searched")
                continue
            dates = [dt.date.fromisoformat(only[1])] if only else None
            changed = inbox.redact_bodies(reader.provider, forget.redact_text, dates=dates)
            receipt.count(spec.name, 0, sum(changed.values()))
            dates = {d.isoformat() for d in changed}
        else:  # pragma: no cover - the registry's reader kinds are the three above
            raise TypeError(f"{spec.name}: no erasure for readers of kind {reader.kind}")
        if dates:
            affected.setdefault(spec.name, set()).update(dates)
    return affected


def _rewrite_partner_files(
    lake: Lake, spec: SourceSpec, forget: ForgetList, receipt: Receipt, scratch: Path | None, day: str | None
) -> set[str]:
    from dagster_project.lib.erasure import redact_delimited

    dates: set[str] = set()
    landed = landing.landed_files(lake, spec.name, day) if day else landing.all_landed_files(lake, spec.name)
    for manifest in landed:
        key = landing.landed_key(lake, manifest)
        with (
            landing.local_copy(lake, key, sha256=manifest.sha256, scratch=scratch) as original,
            tempfile.TemporaryDirectory(prefix="medallion-erase-", dir=scratch) as tmp,
        ):
            redacted = Path(tmp) / manifest.file_name
            with original.open("rb") as src, redacted.open("wb") as dst:
                records = redact_delimited(spec, src, dst, forget)
            if records:
                landing.rewrite_landed(lake, manifest, redacted, request_id=receipt.request_id, records=records)
                receipt.count(spec.name, 1, records)
                dates.add(manifest.business_date)
    return dates


def _rewrite_record_files(
    lake: Lake, spec: SourceSpec, forget: ForgetList, receipt: Receipt, scratch: Path | None
) -> set[str]:
    """Airbyte record files have no manifests (the destination writes them): each is replaced in place."""
    from dagster_project.lib.bronze.readers.airbyte_records import business_dates_in, stream_folder
    from dagster_project.lib.erasure import redact_json_lines
    from dagster_project.lib.intake.airbyte_destination import record_files

    folder = stream_folder(spec, lake)
    prefix = lake.relative(folder.root)
    dates: set[str] = set()
    for record_file in record_files(folder):
        key = f"{prefix}/{record_file.name}"
        with (
            landing.local_copy(lake, key, scratch=scratch) as original,
            tempfile.TemporaryDirectory(prefix="medallion-erase-", dir=scratch) as tmp,
        ):
            redacted = Path(tmp) / "records"
            with original.open("rb") as src, redacted.open("wb") as dst:
                records = redact_json_lines(spec, src, dst, forget)
            if not records:
                continue
            dates.update(business_dates_in(spec, lake, [record_file]))  # before: a deleted record's date too
            with redacted.open("rb") as fh:
                obstore.put(lake.store, key, fh)
            receipt.count(spec.name, 1, records)
    return dates


def expired_dates(lake: Lake, feed: str) -> set[str]:
    """The business dates of `feed` whose landed files retention removed (their partition holds the marker)."""
    marker = "/" + landing.EXPIRED_MARKER
    return {
        meta["path"].split("/business_date=", 1)[1].split("/", 1)[0]
        for batch in obstore.list(lake.store, f"{landing.LANDING}/{feed}/")
        for meta in batch
        if meta["path"].endswith(marker) and "/business_date=" in meta["path"]
    }


def _stored_partitions_naming_subjects(lake: Lake, spec: SourceSpec, forget: ForgetList, dates: set[str]) -> set[str]:
    """Of these partitions (their landing expired), those whose bronze or quarantine rows name a subject."""
    return {day for day in dates if any(forget.count_named(spec, b) for b in _stored_batches(lake, spec, day))}


def _stored_batches(lake: Lake, spec: SourceSpec, day: str | None, batch_rows: int = 64 * 1024) -> Iterator[Any]:
    """The rows bronze and quarantine hold for `spec` (one business date, or all), in record batches."""
    import pyarrow.dataset as ds
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    for layer in ("bronze", "quarantine"):
        try:
            table = DeltaTable(lake.table(layer, spec.name), storage_options=lake.delta_options())
        except TableNotFoundError:
            continue
        where = ds.field("business_date") == dt.date.fromisoformat(day) if day else None
        yield from table.to_pyarrow_dataset().to_batches(filter=where, batch_size=batch_rows)


def remaining(lake: Lake, forget: ForgetList) -> dict[str, int]:
    """The verification of an erasure: how many records of every bronze and quarantine table still name a
    forgotten subject (silver and gold are rebuilt from bronze). Empty when none does."""
    found: dict[str, int] = {}
    for spec in SOURCES.values():
        if spec.subject_columns:
            count = sum(forget.count_named(spec, batch) for batch in _stored_batches(lake, spec, None))
            if count:
                found[spec.name] = count
    return found


class StoredPartitionReader:
    """A bronze partition and its quarantine partition read back as they are: the input of a partition whose
    landed files retention removed, so that erasure rewrites it (the forget list applied) through the engine,
    with a new load of both tables as every load has."""

    def __init__(self, spec: SourceSpec, lake: Lake, business_date: str):
        self.spec, self.lake = spec, lake
        self.business_date = dt.date.fromisoformat(business_date)
        self.origins = [engine.OriginLoad(f"stored:{spec.name}/{business_date}")]

    def details(self) -> dict[str, Any]:
        return {"input": "the stored partition (its landed files expired)"}

    def read(self, batch_rows: int) -> Iterator[tuple[engine.OriginLoad, Any]]:
        import pyarrow as pa

        for batch in _stored_batches(self.lake, self.spec, self.business_date.isoformat(), batch_rows):
            if engine.REASONS not in batch.schema.names:  # bronze: good records
                n = batch.num_rows
                batch = batch.append_column(engine.REASONS, pa.nulls(n, pa.list_(pa.string())))
                batch = batch.append_column(engine.RAW_RECORD, pa.nulls(n, pa.string()))
            yield self.origins[0], batch


def open_reader(
    spec: SourceSpec, lake: Lake, business_date: str, *, inbox: Inbox | None = None
) -> AbstractContextManager[engine.Reader]:
    """A reader over what has landed for one partition of `spec`, whatever the source's kind; the partition
    as stored when its landed files expired."""
    reader = spec.reader
    if isinstance(reader, PartnerFiles) and retention.expired(lake, spec.name, business_date) is not None:
        return nullcontext(StoredPartitionReader(spec, lake, business_date))
    if isinstance(reader, PartnerFiles):
        from dagster_project.lib.bronze.readers.partner_files import PartnerFilesReader

        landed = landing.landed_files(lake, spec.name, business_date)
        return nullcontext(PartnerFilesReader(spec, landed, business_date, lake=lake))
    if isinstance(reader, AirbyteStream):
        from dagster_project.lib.bronze.readers.airbyte_records import AirbyteRecordsReader

        return nullcontext(AirbyteRecordsReader(spec, lake, business_date))
    if inbox is None:
        raise ValueError(f"{spec.name}: reading webhook events needs the inbox")
    return _inbox_reader(spec, inbox, business_date)


@contextmanager
def _inbox_reader(spec: SourceSpec, inbox: Inbox, business_date: str) -> Iterator[engine.Reader]:
    from dagster_project.lib.bronze.readers.webhook_events import WebhookEventsReader

    events = inbox.iter_for_dates(spec.webhook.provider, [dt.date.fromisoformat(business_date)])
    yield WebhookEventsReader(spec, events, business_date)


def reload_bronze(
    lake: Lake,
    forget: ForgetList,
    affected: dict[str, set[str]],
    receipt: Receipt,
    *,
    run_id: str,
    inbox: Inbox | None,
    on_event: Callable[[engine.LoadEvent], None] | None = None,
) -> list[engine.LoadResult]:
    """Step 4: load every affected bronze partition again with the bronze engine; then purge the history of
    the tables they are in (step 5)."""
    results = []
    for source, dates in sorted(affected.items()):
        spec = SOURCES[source]
        for layer in ("bronze", "quarantine"):  # the reloaded files keep no statistics of PII columns
            set_properties(lake, lake.table(layer, source), engine.table_configuration(spec, layer))
        for day in sorted(dates):
            results.append(
                engine.load_partition(
                    spec,
                    lambda spec=spec, day=day: open_reader(spec, lake, day, inbox=inbox),
                    lake=lake,
                    run_id=run_id,
                    business_date=day,
                    on_event=on_event,
                    forget=forget,
                )
            )
        receipt.partitions_reloaded[source] = sorted(dates)
    for source in sorted(affected):
        for layer in ("bronze", "quarantine"):
            receipt.tables_purged[f"{layer}.{source}"] = purge_history(lake, lake.table(layer, source))
    return results


def set_properties(lake: Lake, uri: str, properties: dict[str, str]) -> dict[str, str] | None:
    """Set Delta table properties that differ (one commit, none when all are set); returns the table's
    properties as they were, None when there is no table."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(uri, storage_options=lake.delta_options())
    except TableNotFoundError:
        return None
    current = dict(table.metadata().configuration)
    if any(current.get(k) != v for k, v in properties.items()):
        table.alter.set_table_properties(properties, raise_if_not_exists=False)
    return current


def purge_history(lake: Lake, uri: str) -> int:
    """Remove every earlier version of a Delta table: files no longer in its current version are deleted
    (no retention), and its log is cut to a checkpoint of the current version. Returns how many files were
    removed (0 when there is no table).

    Time travel to earlier versions ends here, and a writer that pinned an earlier version loses its commit
    and retries (the bronze engine and the dbt steps do)."""
    from deltalake import DeltaTable

    current = set_properties(lake, uri, {"delta.logRetentionDuration": "interval 0 seconds"})
    if current is None:
        return 0
    table = DeltaTable(uri, storage_options=lake.delta_options())
    removed = table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    table.create_checkpoint()
    table.cleanup_metadata()
    restored = current.get("delta.logRetentionDuration", LOG_RETENTION)
    table.alter.set_table_properties({"delta.logRetentionDuration": restored}, raise_if_not_exists=False)
    return len(removed)
