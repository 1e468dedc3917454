"""Retention: what each layer of the platform keeps, and for how long. One function per layer, each returning
a `Removal` (counts and bytes, never contents or record values) for the job's receipt.

- **Delta tables** (bronze, quarantine, silver, gold, any other layer): files no longer in the table's
  current version are vacuumed after `hours` (a full vacuum, so the files of killed writes, which no commit
  references, go too), a checkpoint is written, and log entries older than `hours` are cleaned up. The
  tables' `delta.logRetentionDuration` and `delta.deletedFileRetentionDuration` are set to the same span, so
  the log cleanup of every later commit and any other engine's VACUUM keep the same history: time travel
  reaches back `hours`, no further.
- **Quarantine rows**: whole business-date partitions older than `days` (a Delta delete on the partition
  column only: files are dropped, never rewritten). A re-run of that bronze partition quarantines them again
  from landing.
- **Landing**: a feed's business-date partitions older than `days` lose their files, manifests and
  content-index entries; a marker `_expired.json` stays in the partition, so that a later rebuild of that
  bronze partition can refuse (`expired`) instead of silently emptying bronze. The sequence-number claims
  stay (a number is used once, for ever). Airbyte output is not kept by business date and is left alone.
- **Upload leftovers**: objects under `landing/_uploads/` (interrupted landings) older than `hours`.
- **SFTP folders**: files in the server's archive/ and quarantine/ older than `days`; a quarantined file is
  as old as its `.reason.txt` (written when it was quarantined; the move keeps the upload's mtime).

`days`/`hours` of None keep for ever (the function removes nothing); 0 keeps nothing beyond the present.
`now` is the clock (tests pass their own); Delta's vacuum and log cleanup use deltalake's own clock, the
wall clock.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import obstore
from obstore.exceptions import NotFoundError

from dagster_project.lib.intake.landing import (
    EXPIRED_MARKER,
    LANDING,
    MANIFEST_SUFFIX,
    UPLOADS,
    Manifest,
    landed_key,
    partition_prefix,
)
from dagster_project.lib.intake.sftp_inbox import REASON_SUFFIX, reason_file_name
from dagster_project.lib.lake import LAYERS, Lake

if TYPE_CHECKING:
    from dagster_project.lib.clients.sftp import SftpClient

_DATE_FOLDER = partition_prefix("feed", "").rsplit("/", 1)[-1]  # "business_date=", as landing names its folders
_INDEX = "_sha256"
_NOT_FOUND = (FileNotFoundError, NotFoundError)


@dataclass
class Removal:
    """What one layer's retention removed (or, in a dry run, would remove)."""

    layer: str
    kept: str  # the rule applied, e.g. "90 days", or "for ever" (nothing removed)
    dry_run: bool = False
    counts: dict[str, int] = field(default_factory=dict)  # e.g. {"files": 3, "log_entries": 4}
    bytes: int = 0
    per_item: dict[str, dict[str, int]] = field(default_factory=dict)  # per table, feed or folder
    errors: dict[str, str] = field(default_factory=dict)  # item -> error (type and message, no values)

    def add(self, item: str, **counts: int) -> None:
        mine = self.per_item.setdefault(item, {})
        for name, value in counts.items():
            mine[name] = mine.get(name, 0) + value
            if name == "bytes":
                self.bytes += value
            else:
                self.counts[name] = self.counts.get(name, 0) + value

    def receipt(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "kept": self.kept,
            "dry_run": self.dry_run,
            "counts": dict(self.counts),
            "bytes": self.bytes,
            "per_item": {k: dict(v) for k, v in sorted(self.per_item.items()) if any(v.values())},
            "errors": dict(self.errors),
        }


def _now(now: dt.datetime | None) -> dt.datetime:
    return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)


def _kept(amount: int | None, unit: str) -> str:
    return "for ever" if amount is None else f"{amount} {unit}"


def cutoff_date(days: int, now: dt.datetime | None = None) -> dt.date:
    """The oldest business date kept: partitions dated before it expire."""
    return _now(now).date() - dt.timedelta(days=days)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _listing(lake: Lake, prefix: str) -> dict[str, int]:
    """Lake-relative path -> size of every object under `prefix` (a folder, ending with '/')."""
    return {meta["path"]: meta["size"] for batch in obstore.list(lake.store, prefix) for meta in batch}


def _folders(lake: Lake, prefix: str | None) -> list[str]:
    """Names of the folders directly under `prefix` ('' or None: the lake root)."""
    listed = obstore.list_with_delimiter(lake.store, prefix or None)["common_prefixes"]
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in listed)


# -- Delta tables -------------------------------------------------------------------------------------------


def delta_layers(lake: Lake) -> list[str]:
    """The layers holding Delta tables: the platform's own, then any other top-level folder of the lake
    (landing and folders starting with `_` or `.` left out)."""
    others = [f for f in _folders(lake, None) if f not in LAYERS and f != LANDING and not f.startswith(("_", "."))]
    return [*LAYERS, *others]


def retention_interval(hours: int) -> str:
    """A duration as Delta table properties write it."""
    return f"interval {hours} hours"


def vacuum_tables(lake: Lake, hours: int | None, *, dry_run: bool = False) -> Removal:
    """Vacuum every Delta table of the lake, checkpoint it and clean its log (see the module docstring)."""
    removal = Removal("delta_versions", _kept(hours, "hours"), dry_run)
    if hours is None:
        return removal
    for layer in delta_layers(lake):
        for name in lake.tables(layer):
            try:
                vacuum_table(lake, layer, name, hours, dry_run=dry_run, into=removal)
            except Exception as exc:  # one table's failure does not keep the others from their retention
                removal.errors[f"{layer}.{name}"] = _error(exc)
    return removal


def vacuum_table(
    lake: Lake, layer: str, name: str, hours: int, *, dry_run: bool = False, into: Removal | None = None
) -> Removal:
    """Vacuum one Delta table: files out of its current version for more than `hours` (and files no commit
    references, such as a killed write's), then a checkpoint and the log entries older than `hours`."""
    from deltalake import DeltaTable

    removal = into or Removal("delta_versions", _kept(hours, "hours"), dry_run)
    item = f"{layer}.{name}"
    uri = lake.table(layer, name)
    relative = f"{layer}/{name}"  # the table's lake-relative folder, as `Lake.table` names it
    before = _listing(lake, relative + "/")
    table = DeltaTable(uri, storage_options=lake.delta_options())
    if not dry_run:
        wanted = {
            "delta.logRetentionDuration": retention_interval(hours),
            "delta.deletedFileRetentionDuration": retention_interval(hours),
        }
        configuration = table.metadata().configuration
        if any(configuration.get(k) != v for k, v in wanted.items()):
            table.alter.set_table_properties(wanted)
    # Full: also the files of writes that never committed (older than `hours`, so an ongoing write is safe).
    vacuumed = table.vacuum(retention_hours=hours, enforce_retention_duration=False, dry_run=dry_run, full=True)
    files = [f"{relative}/{path}" for path in vacuumed]
    removal.add(item, files=len(files), bytes=sum(before.get(f, 0) for f in files))
    if not dry_run:
        table.create_checkpoint()
        table.cleanup_metadata()
        after = _listing(lake, relative + "/_delta_log/")
        log = [k for k in before if k.startswith(relative + "/_delta_log/") and k not in after]
        removal.add(item, log_entries=len(log), bytes=sum(before[k] for k in log))
    return removal


# -- quarantine rows ----------------------------------------------------------------------------------------


def expire_quarantine(
    lake: Lake, days: int | None, *, now: dt.datetime | None = None, dry_run: bool = False
) -> Removal:
    """Delete the business-date partitions older than `days` from every quarantine table."""
    import pyarrow as pa
    from deltalake import CommitProperties, DeltaTable

    from dagster_project.lib.bronze.contract import PARTITION_COLUMN

    removal = Removal("quarantine", _kept(days, "days"), dry_run)
    if days is None:
        return removal
    cutoff = cutoff_date(days, now)
    for name in lake.tables("quarantine"):
        try:
            table = DeltaTable(lake.table("quarantine", name), storage_options=lake.delta_options())
            if PARTITION_COLUMN not in table.metadata().partition_columns:
                removal.errors[name] = f"not partitioned by {PARTITION_COLUMN}: left as it is"
                continue
            actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
            old = [a for a in actions if a[f"partition.{PARTITION_COLUMN}"] < cutoff]
            if not old:
                continue
            removal.add(
                name,
                partitions=len({a[f"partition.{PARTITION_COLUMN}"] for a in old}),
                rows=sum(a["num_records"] or 0 for a in old),
                files=len(old),
                bytes=sum(a["size_bytes"] for a in old),
            )
            if not dry_run:
                # Only the partition column: whole files are dropped. The date is ours (a date object).
                table.delete(
                    f"{PARTITION_COLUMN} < '{cutoff.isoformat()}'",
                    commit_properties=CommitProperties(
                        custom_metadata={"medallion.retention": f"quarantine kept {days} days"}
                    ),
                )
        except Exception as exc:
            removal.errors[name] = _error(exc)
    return removal


# -- landing --------------------------------------------------------------------------------------------------


def expired(lake: Lake, feed: str, business_date: str) -> dict[str, Any] | None:
    """The marker retention left in a landing partition whose files it removed, or None if it has none.

    A bronze rebuild of that partition must refuse when this is not None: its files are gone on purpose,
    and rebuilding from what is left would empty the partition."""
    try:
        return json.loads(bytes(obstore.get(lake.store, _marker_key(feed, business_date)).bytes()))
    except _NOT_FOUND:
        return None


def _marker_key(feed: str, business_date: str) -> str:
    return f"{partition_prefix(feed, business_date)}/{EXPIRED_MARKER}"


def landing_partitions(lake: Lake) -> Iterable[tuple[str, str]]:
    """(feed, business date) of every date folder in landing."""
    for feed in _folders(lake, f"{LANDING}/"):
        if feed.startswith(("_", ".")):
            continue
        for folder in _folders(lake, f"{LANDING}/{feed}/"):
            if folder.startswith(_DATE_FOLDER):
                yield feed, folder[len(_DATE_FOLDER) :]


def expire_landing(
    lake: Lake,
    days: int | None,
    *,
    now: dt.datetime | None = None,
    dry_run: bool = False,
    setting: str = "MEDALLION_RETENTION_LANDING_DAYS",
) -> Removal:
    """Remove the landed files of partitions dated more than `days` ago, leaving a marker in each."""
    removal = Removal("landing", _kept(days, "days"), dry_run)
    if days is None:
        return removal
    moment = _now(now)
    cutoff = cutoff_date(days, moment)
    for feed, day in landing_partitions(lake):
        try:
            date = dt.date.fromisoformat(day)
        except ValueError:
            continue  # not a folder landing wrote
        if date >= cutoff:
            continue
        try:
            _expire_partition(
                lake,
                feed,
                day,
                removal,
                dry_run=dry_run,
                marker={
                    "expired_at": moment.isoformat(),
                    "setting": setting,
                    "days": days,
                    "cutoff": cutoff.isoformat(),
                },
            )
        except Exception as exc:
            removal.errors[f"{feed}/{day}"] = _error(exc)
    return removal


def _expire_partition(
    lake: Lake, feed: str, day: str, removal: Removal, *, dry_run: bool, marker: dict[str, Any]
) -> None:
    prefix = partition_prefix(feed, day) + "/"
    marker_key = _marker_key(feed, day)
    objects = {k: v for k, v in _listing(lake, prefix).items() if k != marker_key}
    if not objects:
        return
    manifest_keys = [k for k in objects if k.endswith(MANIFEST_SUFFIX)]
    manifests = [m for m in (_read_manifest(lake, k) for k in manifest_keys) if m is not None]
    files = [k for k in objects if not k.endswith(MANIFEST_SUFFIX)]
    index = [k for k in (_index_key(feed, m.sha256) for m in manifests) if _claims(lake, k, feed, day)]
    removal.add(
        feed,
        partitions=1,
        files=len(files),
        manifests=len(manifest_keys),
        index_entries=len(index),
        bytes=sum(objects.values()),
    )
    if dry_run:
        return
    # The marker first: from then on a rebuild refuses, whatever is left of the partition.
    previous = expired(lake, feed, day) or {}
    names = sorted({*previous.get("files", []), *(m.file_name for m in manifests)})
    obstore.put(lake.store, marker_key, json.dumps({**marker, "files": names}, indent=2).encode())
    # Manifests before files (readers only follow manifests), index entries last.
    for keys in (manifest_keys, files, index):
        if keys:
            obstore.delete(lake.store, keys)


def _index_key(feed: str, sha256: str) -> str:
    return f"{LANDING}/{feed}/{_INDEX}/{sha256}.json"


def _claims(lake: Lake, key: str, feed: str, day: str) -> bool:
    """Whether the content-index entry at `key` points into this partition (and not at a landing elsewhere)."""
    claimed = _read_manifest(lake, key)
    if claimed is None:
        return False
    try:
        where = landed_key(lake, claimed)  # older manifests record an absolute local path
    except ValueError:
        return False
    return where.startswith(partition_prefix(feed, day) + "/")


def _read_manifest(lake: Lake, key: str) -> Manifest | None:
    try:
        return Manifest.from_json(bytes(obstore.get(lake.store, key).bytes()))
    except _NOT_FOUND:
        return None


def expire_uploads(lake: Lake, hours: int | None, *, now: dt.datetime | None = None, dry_run: bool = False) -> Removal:
    """Remove objects under landing/_uploads/ (interrupted landings) last written more than `hours` ago."""
    removal = Removal("landing_uploads", _kept(hours, "hours"), dry_run)
    if hours is None:
        return removal
    cutoff = _now(now) - dt.timedelta(hours=hours)
    old = [
        meta for batch in obstore.list(lake.store, f"{UPLOADS}/") for meta in batch if meta["last_modified"] < cutoff
    ]
    removal.add(UPLOADS, objects=len(old), bytes=sum(m["size"] for m in old))
    if old and not dry_run:
        obstore.delete(lake.store, [m["path"] for m in old])
    return removal


# -- SFTP -----------------------------------------------------------------------------------------------------


def expire_sftp_folder(
    client: SftpClient,
    folder: str,
    days: int | None,
    *,
    now: dt.datetime | None = None,
    dry_run: bool = False,
    layer: str = "sftp",
    into: Removal | None = None,
) -> Removal:
    """Remove the files of a remote folder older than `days` (by mtime; a quarantined file by its reason
    file's, so it is kept `days` from when it was quarantined). A missing folder holds nothing."""
    removal = into or Removal(layer, _kept(days, "days"), dry_run)
    if days is None:
        return removal
    cutoff = (_now(now) - dt.timedelta(days=days)).timestamp()
    try:
        listed = {f.name: f for f in client.list_dir(folder)}
    except FileNotFoundError:
        return removal
    reasons = {name for name in listed if name.endswith(REASON_SUFFIX)}
    files = {name: reason_file_name(name) for name in listed if name not in reasons}
    doomed: set[str] = set()
    for name, reason_name in files.items():
        reason = listed.get(reason_name)
        if max(listed[name].mtime, reason.mtime if reason else 0) < cutoff:
            doomed |= {name, reason_name} if reason else {name}
    # A reason file whose file is gone goes by its own age.
    doomed |= {n for n in reasons - set(files.values()) if listed[n].mtime < cutoff}
    removal.add(folder, files=len(doomed), bytes=sum(listed[n].size for n in doomed))
    if not dry_run:
        for name in sorted(doomed):
            client.remove(posixpath.join(folder, name))
    return removal
