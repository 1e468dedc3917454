"""The landing zone: every received file kept byte for byte, with a manifest, never rewritten.

Layout: `<landing_root>/<feed>/business_date=<YYYY-MM-DD>/<file name>` plus `<file name>.manifest.json`.
A bronze partition is rebuilt from exactly the files landed for its date, so landing is the source of truth.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from dagster_project.lib.checksums import FileDigest, digest_file
from dagster_project.lib.sources.naming import ParsedName

MANIFEST_SUFFIX = ".manifest.json"


class ChecksumMismatch(ValueError):
    """The content's CRC32 differs from the one the file name declares (a corrupt or partial transfer)."""


@dataclass(frozen=True)
class Manifest:
    feed: str
    file_name: str
    business_date: str
    sequence: int
    size: int
    crc32: str
    sha256: str
    schema_version: int
    source: str  # the intake that delivered it, e.g. "sftp"
    source_uri: str  # where it was taken from (no credentials)
    received_at: str  # ISO 8601 UTC
    landed_path: str

    @classmethod
    def read(cls, path: Path) -> Manifest:
        return cls(**json.loads(path.read_text()))


@dataclass(frozen=True)
class LandResult:
    manifest: Manifest
    status: str  # "landed" | "already_landed" | "duplicate_content"
    duplicate_of: str | None = None


def partition_dir(landing_root: Path, feed: str, business_date: str) -> Path:
    return landing_root / feed / f"business_date={business_date}"


def verify_crc32(parsed: ParsedName, staged: Path) -> FileDigest:
    """Digest of the staged file, after checking it against the CRC32 the file name declares."""
    digest = digest_file(staged)
    if digest.crc32 != parsed.crc32:
        raise ChecksumMismatch(
            f"{parsed.file_name}: CRC32 of the content is {digest.crc32}, the file name declares {parsed.crc32}"
        )
    return digest


def find_by_sha256(landing_root: Path, feed: str, sha256: str) -> Manifest | None:
    for path in sorted((landing_root / feed).glob(f"business_date=*/*{MANIFEST_SUFFIX}")):
        manifest = Manifest.read(path)
        if manifest.sha256 == sha256:
            return manifest
    return None


def land_file(
    landing_root: Path,
    parsed: ParsedName,
    staged: Path,
    *,
    source: str,
    source_uri: str,
    received_at: dt.datetime,
) -> LandResult:
    """Move a downloaded file into landing after checking its CRC32; idempotent on content."""
    digest = verify_crc32(parsed, staged)
    existing = find_by_sha256(landing_root, parsed.source.name, digest.sha256)
    if existing is not None:
        status = "already_landed" if existing.file_name == parsed.file_name else "duplicate_content"
        staged.unlink(missing_ok=True)
        return LandResult(existing, status, duplicate_of=existing.file_name)

    target_dir = partition_dir(landing_root, parsed.source.name, parsed.business_date)
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / parsed.file_name
    if target.exists() and digest_file(target).sha256 != digest.sha256:
        raise FileExistsError(f"{parsed.file_name}: already landed with different content; landing is immutable")
    manifest = Manifest(
        feed=parsed.source.name,
        file_name=parsed.file_name,
        business_date=parsed.business_date,
        sequence=parsed.sequence,
        size=digest.size,
        crc32=digest.crc32,
        sha256=digest.sha256,
        schema_version=parsed.source.schema_version,
        source=source,
        source_uri=source_uri,
        received_at=received_at.astimezone(dt.UTC).isoformat(),
        landed_path=str(target),
    )
    if target.exists():
        # Same bytes, but no manifest: an earlier attempt stopped after the move. Finish that landing.
        staged.unlink()
    else:
        shutil.move(staged, target)
    target.chmod(0o444)
    # The manifest is written last and atomically: a file without a manifest is not landed yet.
    tmp = target_dir / f".{parsed.file_name}{MANIFEST_SUFFIX}.tmp"
    tmp.write_text(json.dumps(asdict(manifest), indent=2))
    os.replace(tmp, target_dir / f"{parsed.file_name}{MANIFEST_SUFFIX}")
    return LandResult(manifest, "landed")


def landed_files(landing_root: Path, feed: str, business_date: str) -> list[Manifest]:
    """Every file landed for one partition, in sequence order."""
    directory = partition_dir(landing_root, feed, business_date)
    manifests = [Manifest.read(p) for p in directory.glob(f"*{MANIFEST_SUFFIX}")]
    return sorted(manifests, key=lambda m: (m.sequence, m.file_name))
