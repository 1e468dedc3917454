"""Streaming checksums: constant memory whatever the file size."""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class FileDigest:
    size: int
    crc32: str  # 8 upper-case hex digits, as in the file-name contract
    sha256: str


def digest_file(path: Path) -> FileDigest:
    sha = hashlib.sha256()
    crc = 0
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return FileDigest(size=size, crc32=f"{crc & 0xFFFFFFFF:08X}", sha256=sha.hexdigest())


def crc32_hex(data: bytes) -> str:
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08X}"
