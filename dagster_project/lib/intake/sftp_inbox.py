"""Taking one partner file from the SFTP inbox into landing, or into quarantine with a reason.

The order keeps the invariants: nothing leaves the inbox before it is either landed (with a manifest)
or quarantined (with a reason file beside it), and a file whose content has landed before is archived
without landing twice. The file is downloaded to a local staging folder, then landed in the lake (a local
folder or an object store).
"""

from __future__ import annotations

import datetime as dt
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dagster_project.lib.intake.landing import ChecksumMismatch, LandingConflict, Manifest, land_file
from dagster_project.lib.sources.naming import NamingError, is_temporary, parse_file_name

if TYPE_CHECKING:  # paramiko loads with the client, where files are moved
    from dagster_project.lib.clients.sftp import RemoteFile, SftpClient
    from dagster_project.lib.lake import Lake


@dataclass(frozen=True)
class RemoteLayout:
    inbox: str
    archive: str
    quarantine: str


@dataclass(frozen=True)
class IntakeOutcome:
    file_name: str
    status: str  # landed | already_landed | duplicate_content | quarantined | missing
    reason: str | None = None
    manifest: Manifest | None = None

    @property
    def accepted(self) -> bool:
        return self.status in ("landed", "already_landed", "duplicate_content", "missing")


def quarantine_remote(client: SftpClient, layout: RemoteLayout, file_name: str, reason: str) -> IntakeOutcome:
    """Move a rejected file out of the inbox, with a `.reason.txt` beside it saying which rule it broke."""
    client.write_bytes(posixpath.join(layout.quarantine, f"{file_name}.reason.txt"), (reason + "\n").encode())
    client.move(posixpath.join(layout.inbox, file_name), posixpath.join(layout.quarantine, file_name))
    return IntakeOutcome(file_name, "quarantined", reason=reason)


def take_file(
    client: SftpClient,
    layout: RemoteLayout,
    file_name: str,
    *,
    lake: Lake,
    staging_dir: Path,
    source_uri: str,
) -> IntakeOutcome:
    from dagster_project.lib.bronze.contract import ContractError, read_header, resolve_columns  # loads Arrow

    remote = posixpath.join(layout.inbox, file_name)
    if not client.exists(remote):
        return IntakeOutcome(file_name, "missing", reason="no longer in the inbox (taken by an earlier run)")
    try:
        parsed = parse_file_name(file_name)
    except NamingError as exc:
        return quarantine_remote(client, layout, file_name, str(exc))
    staging_dir.mkdir(parents=True, exist_ok=True)
    staged = staging_dir / file_name
    received_at = dt.datetime.now(dt.UTC)
    client.download(remote, staged)
    try:
        resolve_columns(parsed.source, read_header(staged, parsed.source.files.delimiter), file_name)
        result = land_file(lake, parsed, staged, source="sftp", source_uri=source_uri, received_at=received_at)
    except (ChecksumMismatch, ContractError, LandingConflict, UnicodeDecodeError) as exc:
        staged.unlink(missing_ok=True)
        reason = str(exc) if not isinstance(exc, UnicodeDecodeError) else f"{file_name}: header is not UTF-8"
        return quarantine_remote(client, layout, file_name, reason)
    client.move(remote, posixpath.join(layout.archive, file_name))
    reason = f"same content as {result.duplicate_of}" if result.status == "duplicate_content" else None
    return IntakeOutcome(file_name, result.status, reason=reason, manifest=result.manifest)


@dataclass(frozen=True)
class InboxPlan:
    ready: list[RemoteFile]  # complete files to take now
    waiting: dict[str, tuple[int, int]]  # name -> (size, mtime) seen this time, not yet stable
    broken: dict[str, str]  # name -> why it breaks the naming contract


def plan_inbox(
    files: list[RemoteFile], previous: dict[str, tuple[int, int]], *, now: float, stable_seconds: float
) -> InboxPlan:
    """Decide which inbox files are complete. A file is taken once two looks in a row saw the same
    size and mtime (and it is at least `stable_seconds` old); temporary upload names are never taken."""
    ready, waiting, broken = [], {}, {}
    for f in files:
        if is_temporary(f.name):
            continue
        try:
            parse_file_name(f.name)
        except NamingError as exc:
            broken[f.name] = str(exc)
            continue
        seen = previous.get(f.name)
        if seen == (f.size, f.mtime) and now - f.mtime >= stable_seconds:
            ready.append(f)
        else:
            waiting[f.name] = (f.size, f.mtime)
    return InboxPlan(ready=ready, waiting=waiting, broken=broken)
