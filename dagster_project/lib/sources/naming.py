"""The partner file-name contract: `<system>_<entity>_<YYYY-MM-DD>_seq-<NNNNN>_crc32-<8 hex>.<ext>`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from dagster_project.lib.sources.registry import partner_file_sources
from dagster_project.lib.sources.spec import SourceSpec

# Names an uploader uses while a transfer is still running; such files are never taken.
TEMPORARY_SUFFIXES = (".part", ".tmp", ".filepart", ".partial", ".upload", ".crdownload")


class NamingError(ValueError):
    """A file name that breaks the naming contract; the message says which rule."""


@dataclass(frozen=True)
class ParsedName:
    file_name: str
    source: SourceSpec
    business_date: str  # ISO date, the partition key
    sequence: int
    crc32: str  # upper-case hex


def is_temporary(file_name: str) -> bool:
    lower = file_name.lower()
    return file_name.startswith((".", "~")) or lower.endswith(TEMPORARY_SUFFIXES)


def parse_file_name(file_name: str, sources: list[SourceSpec] | None = None) -> ParsedName:
    sources = partner_file_sources() if sources is None else sources
    spec = next((s for s in sources if file_name.startswith(s.files.file_prefix)), None)
    if spec is None:
        known = ", ".join(sorted(s.files.file_prefix + "*" for s in sources))
        raise NamingError(f"{file_name}: unknown feed; expected a name starting with one of {known}")
    match = spec.files.file_name_regex.match(file_name)
    if match is None:
        raise NamingError(f"{file_name}: does not follow the naming contract {spec.files.naming_contract}")
    business_date = match["business_date"]
    try:
        dt.date.fromisoformat(business_date)
    except ValueError:
        raise NamingError(f"{file_name}: business date {business_date} is not a calendar date") from None
    return ParsedName(
        file_name=file_name,
        source=spec,
        business_date=business_date,
        sequence=int(match["sequence"]),
        crc32=match["crc32"].upper(),
    )
