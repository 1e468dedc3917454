"""Streaming digests agree with one-shot hashlib/zlib whatever the file size and chunk boundaries."""

from __future__ import annotations

import hashlib
import random
import zlib
from pathlib import Path

import pytest

from dagster_project.lib.checksums import CHUNK, FileDigest, crc32_hex, digest_file


def _random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _expected(data: bytes) -> FileDigest:
    return FileDigest(
        size=len(data), crc32=f"{zlib.crc32(data) & 0xFFFFFFFF:08X}", sha256=hashlib.sha256(data).hexdigest()
    )


def test_multi_megabyte_file_digest_matches_one_shot_hashes(tmp_path: Path) -> None:
    data = _random_bytes(5 * CHUNK + 12_345, seed=1)
    path = tmp_path / "big.csv"
    path.write_bytes(data)
    assert digest_file(path) == _expected(data)


@pytest.mark.parametrize("size", [1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK])
def test_digest_is_exact_around_chunk_boundaries(tmp_path: Path, size: int) -> None:
    data = _random_bytes(size, seed=size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert digest_file(path) == _expected(data)


def test_empty_file_digest(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    assert digest_file(path) == FileDigest(
        size=0, crc32="00000000", sha256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_crc32_hex_of_the_standard_check_string() -> None:
    assert crc32_hex(b"123456789") == "CBF43926"


def test_crc32_hex_keeps_leading_zeros() -> None:
    data = next(d for d in (str(i).encode() for i in range(100_000)) if zlib.crc32(d) < 0x10000000)
    text = crc32_hex(data)
    assert len(text) == 8
    assert text.startswith("0")
    assert int(text, 16) == zlib.crc32(data)


def test_file_digest_crc_is_the_same_as_crc32_hex(tmp_path: Path) -> None:
    data = b"customer_id,email\n1,a@example.com\n"
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    assert digest_file(path).crc32 == crc32_hex(data) == f"{zlib.crc32(data):08X}"
