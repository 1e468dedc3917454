"""The partner's SFTP inbox: what each entry in it becomes, and taking one file into landing or quarantine.

Every entry of the inbox gets exactly one outcome, and one entry never holds up another:

- *taken*: a complete file of a known feed, dated inside the partitions, is landed (or recognised as landed
  before) and moved to `archive/`;
- *quarantined*: a file that breaks the contract (its name, its date, its CRC32, its header, a sequence
  number already used with other content, an empty file) is moved to `quarantine/` with a `.reason.txt`
  beside it saying which rule it broke;
- *reported*: what is not ours to move (a directory, a symbolic link, a hidden or `~` name, a file of a feed
  nobody declared) stays where it is and is reported once.

`plan_inbox` decides, from a listing, without touching the server (the sensor calls it); the moves happen in
runs (`take_file`, `quarantine_remote`), each of which checks, right before it moves a file, that the file
is still the one that was listed: a file that changed since (an upload that stalled and went on) is never
moved, and is looked at again. A file is taken only once its size and mtime have held still for
`stable_seconds`, measured on our clock from the first look that saw them (the server's clock may differ).
A run that fails is asked for again after a backoff that doubles; after `retry_attempts` runs the file is
quarantined with the reason, so that it cannot stay in the inbox for ever without one.

The order inside `take_file` keeps the invariants: nothing leaves the inbox before it is either landed (with
a manifest) or quarantined (with a reason file beside it), and content that has landed before is archived
without landing twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import posixpath
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from dagster_project.lib.intake.landing import ChecksumMismatch, LandingConflict, Manifest, land_file, verify_crc32
from dagster_project.lib.sources.naming import NamingError, ParsedName, is_temporary, parse_file_name

if TYPE_CHECKING:  # paramiko loads with the client, where files are moved
    from dagster_project.lib.clients.sftp import RemoteEntry, SftpClient
    from dagster_project.lib.lake import Lake

REASON_SUFFIX = ".reason.txt"
# Longest file name most servers take (ext4, XFS, APFS: 255 bytes), less the `.part` an upload adds.
MAX_NAME_BYTES = 255 - len(".part")
# The longest wait between two runs for one file, however many failed before.
MAX_BACKOFF_SECONDS = 3600.0


@dataclass(frozen=True)
class RemoteLayout:
    inbox: str
    archive: str
    quarantine: str


@dataclass(frozen=True)
class IntakeOutcome:
    file_name: str
    status: str  # landed | already_landed | duplicate_content | quarantined | missing | changed (left as it is)
    reason: str | None = None
    manifest: Manifest | None = None

    @property
    def accepted(self) -> bool:
        return self.status in ("landed", "already_landed", "duplicate_content", "missing")


class Changed(Exception):
    """The remote file is not the one that was listed (or downloaded): it is left where it is."""

    def __init__(self, message: str, *, missing: bool = False):
        super().__init__(message)
        self.missing = missing


def reason_file_name(file_name: str) -> str:
    """The name of the reason file beside a quarantined file: `<name>.reason.txt`, or for a name too long for
    that, its first bytes and a hash of the whole name (the reason inside names the file in full)."""
    wanted = file_name + REASON_SUFFIX
    if len(wanted.encode()) <= MAX_NAME_BYTES:
        return wanted
    digest = hashlib.sha256(file_name.encode()).hexdigest()[:16]
    keep = MAX_NAME_BYTES - len(REASON_SUFFIX) - len(digest) - 1
    head = file_name.encode()[:keep].decode(errors="ignore")
    return f"{head}~{digest}{REASON_SUFFIX}"


def _unchanged(client: SftpClient, path: str, listed: RemoteEntry | tuple[int, int] | None) -> RemoteEntry:
    """What is at `path`, after checking it is the file that was listed; `Changed` otherwise."""
    now = client.stat(path)
    if now is None:
        raise Changed("no longer in the inbox", missing=True)
    if listed is not None:
        size, mtime = (listed.size, listed.mtime) if not isinstance(listed, tuple) else listed
        if (now.size, now.mtime) != (size, mtime):
            raise Changed(f"changed since it was listed ({size} bytes, mtime {mtime}; now {now.size}, {now.mtime})")
    return now


def quarantine_remote(
    client: SftpClient,
    layout: RemoteLayout,
    file_name: str,
    reason: str,
    *,
    listed: RemoteEntry | tuple[int, int] | None = None,
) -> IntakeOutcome:
    """Move a rejected file out of the inbox, with a `.reason.txt` beside it saying which rule it broke.

    The file is moved only if it is still the one `listed` (size and mtime), checked right before the move;
    otherwise it is left for the next look (`changed`)."""
    remote = posixpath.join(layout.inbox, file_name)
    try:
        now = _unchanged(client, remote, listed)
    except Changed as exc:
        return IntakeOutcome(file_name, "missing" if exc.missing else "changed", reason=str(exc))
    if now.kind != "file":
        return IntakeOutcome(file_name, "changed", reason=f"not a regular file (a {now.kind}): left as it is")
    reason_path = posixpath.join(layout.quarantine, reason_file_name(file_name))
    client.write_bytes(reason_path, (reason + "\n").encode())
    try:
        _unchanged(client, remote, listed)
    except Changed as exc:
        client.remove(reason_path)  # the file stays in the inbox, to be looked at again: no reason for it yet
        return IntakeOutcome(file_name, "missing" if exc.missing else "changed", reason=str(exc))
    client.move(remote, posixpath.join(layout.quarantine, file_name))
    return IntakeOutcome(file_name, "quarantined", reason=reason)


def _staged_name(file_name: str) -> str:
    # Any file name fits a local folder this way, however long or strange the partner's.
    return hashlib.sha256(file_name.encode()).hexdigest()[:32] + ".download"


def take_file(
    client: SftpClient,
    layout: RemoteLayout,
    file_name: str,
    *,
    lake: Lake,
    staging_dir: Path,
    source_uri: str,
    listed: tuple[int, int] | None = None,
    received_at: dt.datetime | None = None,
) -> IntakeOutcome:
    """Land one inbox file and archive it, or quarantine it with the reason; `listed` is the (size, mtime)
    the file had when it was found complete, and a file that is no longer that is left alone."""
    from dagster_project.lib.bronze.contract import ContractError, resolve_columns  # loads Arrow
    from dagster_project.lib.bronze.readers.csv_records import HeaderError, read_header
    from dagster_project.lib.intake import sequences

    remote = posixpath.join(layout.inbox, file_name)
    try:
        before = _unchanged(client, remote, listed)
    except Changed as exc:
        return IntakeOutcome(file_name, "missing" if exc.missing else "changed", reason=str(exc))
    if before.kind != "file":  # named in a run's config: a link or a folder is never taken, nor moved
        return IntakeOutcome(file_name, "changed", reason=f"not a regular file (a {before.kind}): left as it is")
    try:
        parsed = parse_file_name(file_name)
    except NamingError as exc:
        return quarantine_remote(client, layout, file_name, str(exc), listed=before)
    if before.size == 0:
        return quarantine_remote(client, layout, file_name, f"{file_name}: empty file (0 bytes)", listed=before)
    staging_dir.mkdir(parents=True, exist_ok=True)
    staged = staging_dir / _staged_name(file_name)
    received_at = received_at or dt.datetime.now(dt.UTC)
    try:
        downloaded = client.download(remote, staged)
        if downloaded != before.size:
            raise Changed(f"{downloaded} bytes downloaded where {before.size} were listed")
        _unchanged(client, remote, before)
    except Changed as exc:
        staged.unlink(missing_ok=True)
        return IntakeOutcome(file_name, "changed", reason=f"changed while it was downloaded: {exc}")
    claimed_now = False
    try:
        digest = verify_crc32(parsed, staged)
        with staged.open("rb") as fh:
            header = read_header(fh, parsed.source.files.delimiter)
        resolve_columns(parsed.source, header, file_name)
        held, claimed_now = sequences.claim(lake, parsed, digest.sha256)
        # The same name with other bytes is left to landing, which says so; another name is a reused number.
        if held.sha256 != digest.sha256 and held.file_name != file_name:
            raise _SequenceReused(
                f"{file_name}: sequence {parsed.sequence:05d} was delivered before as {held.file_name} "
                f"(business date {held.business_date}) with other content; a sequence number names one "
                "delivery: send a correction under a new number"
            )
        result = land_file(lake, parsed, staged, source="sftp", source_uri=source_uri, received_at=received_at)
    except (ChecksumMismatch, ContractError, LandingConflict, _SequenceReused, HeaderError) as exc:
        if claimed_now and isinstance(exc, LandingConflict):
            sequences.release(lake, parsed)
        staged.unlink(missing_ok=True)
        reason = f"{file_name}: {exc}" if isinstance(exc, HeaderError) else str(exc)
        return quarantine_remote(client, layout, file_name, reason, listed=before)
    reason = f"same content as {result.duplicate_of}" if result.status == "duplicate_content" else None
    try:
        _unchanged(client, remote, before)
    except Changed as exc:
        # Landed from the bytes listed, which match the CRC32 the name declares; the file left behind is
        # looked at again, and taken or quarantined on its own.
        left = f"landed, but left in the inbox: it {exc}"
        return IntakeOutcome(file_name, result.status, reason=left, manifest=result.manifest)
    client.move(remote, posixpath.join(layout.archive, file_name))
    return IntakeOutcome(file_name, result.status, reason=reason, manifest=result.manifest)


class _SequenceReused(ValueError):
    pass


# -- the plan: what each inbox entry becomes --------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A run asked for one inbox file: `take` lands it (its partition's intake job), `quarantine` moves it."""

    action: str  # "take" | "quarantine"
    name: str
    size: int
    mtime: int
    attempt: int = 1
    reason: str | None = None  # why it is quarantined
    feed: str | None = None  # take: the feed and partition
    business_date: str | None = None

    @property
    def key(self) -> str:
        """The run key: one run per action, version of the file and attempt."""
        return f"{self.action}:{self.name}:{self.size}:{self.mtime}:{self.attempt}"


@dataclass(frozen=True)
class RunState:
    """What became of the run of a request."""

    finished: bool
    succeeded: bool = False
    ended_at: float | None = None  # epoch seconds
    run_id: str = ""


@dataclass(frozen=True)
class Report:
    name: str
    reason: str


@dataclass(frozen=True)
class Policy:
    stable_seconds: float  # how long a file's size and mtime must hold still before it is taken
    retry_attempts: int  # runs asked for one file before it is quarantined
    retry_backoff_seconds: float  # wait after the first failed run; it doubles with each failed run
    first_day: dt.date  # the partitions' range: a business date outside it has no partition
    last_day: dt.date


@dataclass
class Cursor:
    """What the sensor remembers between looks, for the entries still in the inbox."""

    seen: dict[str, tuple[int, int, float]] = field(default_factory=dict)  # name -> size, mtime, since
    requested: dict[str, Request] = field(default_factory=dict)  # name -> the last run asked for it
    reported: dict[str, str] = field(default_factory=dict)  # name -> the reason it was reported with

    def to_json(self) -> str:
        return json.dumps(
            {
                "seen": {name: list(v) for name, v in self.seen.items()},
                "requested": {name: asdict(r) for name, r in self.requested.items()},
                "reported": self.reported,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | None, *, now: float) -> Cursor:
        data = json.loads(text or "{}")
        if data and "seen" not in data:  # the previous sensor's cursor: name -> [size, mtime]
            return cls(seen={name: (int(v[0]), int(v[1]), now) for name, v in data.items()})
        return cls(
            seen={name: (int(v[0]), int(v[1]), float(v[2])) for name, v in data.get("seen", {}).items()},
            requested={name: Request(**r) for name, r in data.get("requested", {}).items()},
            reported=dict(data.get("reported", {})),
        )


@dataclass(frozen=True)
class Plan:
    requests: list[Request]  # runs to ask for now (asked again while the run has not started: same key)
    reports: list[Report]  # entries reported for the first time
    waiting: dict[str, str]  # name -> why nothing happens to it now
    cursor: Cursor


def plan_inbox(
    entries: list[RemoteEntry],
    cursor: Cursor,
    *,
    now: float,
    policy: Policy,
    run_state: Callable[[Request], RunState | None],
) -> Plan:
    """One outcome per inbox entry, decided from a listing and what earlier looks and runs found."""
    requests: list[Request] = []
    reports: list[Report] = []
    waiting: dict[str, str] = {}
    after = Cursor()
    for entry in entries:
        try:
            _plan_entry(entry, cursor, after, now, policy, run_state, requests, reports, waiting)
        except Exception as exc:  # one entry that cannot be judged never stops the others
            report = f"could not be judged ({type(exc).__name__}: {exc}); looked at again on the next tick"
            if cursor.reported.get(entry.name) != report:
                reports.append(Report(entry.name, report))
            after.reported[entry.name] = report
    return Plan(requests=requests, reports=reports, waiting=waiting, cursor=after)


def _plan_entry(
    entry: RemoteEntry,
    cursor: Cursor,
    after: Cursor,
    now: float,
    policy: Policy,
    run_state: Callable[[Request], RunState | None],
    requests: list[Request],
    reports: list[Report],
    waiting: dict[str, str],
) -> None:
    report = _report_reason(entry)
    if report is not None:
        if cursor.reported.get(entry.name) != report:
            reports.append(Report(entry.name, report))
        after.reported[entry.name] = report
        return
    if is_temporary(entry.name):
        waiting[entry.name] = "a temporary upload name: taken once it is renamed"
        return
    seen = cursor.seen.get(entry.name)
    unchanged = seen is not None and seen[:2] == (entry.size, entry.mtime)
    since = seen[2] if seen is not None and unchanged else now
    after.seen[entry.name] = (entry.size, entry.mtime, since)
    if not unchanged or now - since < policy.stable_seconds:
        waiting[entry.name] = f"waiting for it to hold still for {policy.stable_seconds:g} s"
        return
    wanted = _wanted(entry, policy)
    if isinstance(wanted, str):  # the date's partition opens later
        waiting[entry.name] = wanted
        return
    request, why = _next_request(wanted, cursor.requested.get(entry.name), now, policy, run_state)
    if request is not None:
        after.requested[entry.name] = request
        if why is None:
            requests.append(request)
        else:
            waiting[entry.name] = why
    elif why is not None:
        waiting[entry.name] = why


def _report_reason(entry: RemoteEntry) -> str | None:
    """Why an entry is left where it is and only reported; None for a file intake deals with."""
    if entry.kind == "directory":
        return "a directory: never taken; the inbox takes files only"
    if entry.kind == "symlink":
        return "a symbolic link: never followed or taken"
    if entry.kind != "file":
        return "not a regular file: never taken"
    if entry.name.startswith((".", "~")):
        return "a hidden or temporary name (starting with '.' or '~'): never taken"
    if not is_temporary(entry.name):
        try:
            parse_file_name(entry.name)
        except NamingError as exc:
            if "unknown feed" in str(exc):
                return str(exc)
    return None


def _wanted(entry: RemoteEntry, policy: Policy) -> Request | str:
    """What should happen to a complete file: a take or a quarantine request, or why it waits."""
    try:
        parsed: ParsedName = parse_file_name(entry.name)
    except NamingError as exc:
        return Request("quarantine", entry.name, entry.size, entry.mtime, reason=str(exc))
    day = dt.date.fromisoformat(parsed.business_date)
    if day < policy.first_day:
        reason = (
            f"{entry.name}: business date {day} is before the first partition, {policy.first_day}; "
            "the platform keeps no data before it (to take the file, set MEDALLION_FIRST_BUSINESS_DATE to its "
            "date or earlier, reload the code location and move the file back into the inbox)"
        )
        return Request("quarantine", entry.name, entry.size, entry.mtime, reason=reason)
    if day > policy.last_day + dt.timedelta(days=1):
        reason = (
            f"{entry.name}: business date {day} is after today's partition, {policy.last_day} (UTC); a file "
            "may be dated at most one day ahead"
        )
        return Request("quarantine", entry.name, entry.size, entry.mtime, reason=reason)
    if day > policy.last_day:
        return f"dated {day}: taken once its partition opens (UTC midnight)"
    return Request(
        "take", entry.name, entry.size, entry.mtime, feed=parsed.source.name, business_date=parsed.business_date
    )


def _next_request(
    wanted: Request,
    last: Request | None,
    now: float,
    policy: Policy,
    run_state: Callable[[Request], RunState | None],
) -> tuple[Request | None, str | None]:
    """The request to remember for a complete file, and None to ask for it now or why it waits."""
    if last is None or (last.size, last.mtime) != (wanted.size, wanted.mtime):
        return wanted, None  # a new file, or a new version of it: a new run
    state = run_state(last)
    if state is None:
        return last, None  # not started yet: ask again under the same key, which the daemon runs once
    if not state.finished:
        return last, f"run {state.run_id} is taking it"
    # The run ended and the file is still here: it failed, or left the file (it changed meanwhile).
    wait = min(policy.retry_backoff_seconds * 2 ** (last.attempt - 1), MAX_BACKOFF_SECONDS)
    if state.ended_at is not None and now < state.ended_at + wait:
        return last, f"run {state.run_id} did not take it; asking again in {state.ended_at + wait - now:.0f} s"
    if last.action == "take" and last.attempt >= policy.retry_attempts:
        reason = (
            f"{wanted.name}: {last.attempt} intake runs did not take it (the last: run {state.run_id}, "
            f"{'succeeded' if state.succeeded else 'failed'}); quarantined so that it does not stay in the "
            "inbox without a reason: send it again once the cause, in the runs' logs, is fixed"
        )
        return Request("quarantine", wanted.name, wanted.size, wanted.mtime, reason=reason), None
    return replace(last, attempt=last.attempt + 1), None
