"""Landing keeps every received file byte for byte, with a manifest, once per content."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from dagster_project.lib.checksums import crc32_hex
from dagster_project.lib.intake.landing import (
    MANIFEST_SUFFIX,
    ChecksumMismatch,
    LandResult,
    Manifest,
    land_file,
    landed_files,
    partition_dir,
)
from dagster_project.lib.sources.naming import parse_file_name
from dagster_project.lib.sources.registry import CUSTOMERS
from tests.lib.customer_files import RECEIVED_AT, customer, customers_csv

Land = Callable[..., LandResult]
CONTENT = customers_csv([customer(1), customer(2)]).encode()


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_landed_file_keeps_the_bytes_under_its_partition(land: Land, landing_root: Path) -> None:
    result = land(CONTENT, business_date="2025-11-05", sequence=3)
    name = CUSTOMERS.files.file_name("2025-11-05", 3, crc32_hex(CONTENT))
    target = landing_root / "customers" / "business_date=2025-11-05" / name
    assert result.status == "landed"
    assert result.duplicate_of is None
    assert target.read_bytes() == CONTENT
    assert _all_files(landing_root) == [
        f"customers/business_date=2025-11-05/{name}",
        f"customers/business_date=2025-11-05/{name}{MANIFEST_SUFFIX}",
    ]


def test_landed_file_is_read_only(land: Land) -> None:
    path = Path(land(CONTENT).manifest.landed_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o444


def test_staged_file_is_moved_not_copied(tmp_path: Path, landing_root: Path) -> None:
    name = CUSTOMERS.files.file_name("2025-11-05", 1, crc32_hex(CONTENT))
    staged = tmp_path / name
    staged.write_bytes(CONTENT)
    land_file(landing_root, parse_file_name(name), staged, source="sftp", source_uri="u", received_at=RECEIVED_AT)
    assert not staged.exists()


def test_manifest_describes_the_landed_file(land: Land, landing_root: Path) -> None:
    result = land(CONTENT, business_date="2025-11-05", sequence=3)
    name = CUSTOMERS.files.file_name("2025-11-05", 3, crc32_hex(CONTENT))
    target_dir = partition_dir(landing_root, "customers", "2025-11-05")
    on_disk = json.loads((target_dir / f"{name}{MANIFEST_SUFFIX}").read_text())
    assert on_disk == {
        "feed": "customers",
        "file_name": name,
        "business_date": "2025-11-05",
        "sequence": 3,
        "size": len(CONTENT),
        "crc32": crc32_hex(CONTENT),
        "sha256": hashlib.sha256(CONTENT).hexdigest(),
        "schema_version": 1,
        "source": "sftp",
        "source_uri": f"sftp://partner.example/inbox/{name}",
        "received_at": "2025-11-05T07:30:00+00:00",
        "landed_path": str(target_dir / name),
    }
    assert Manifest.read(target_dir / f"{name}{MANIFEST_SUFFIX}") == result.manifest


def test_received_at_with_an_offset_is_stored_in_utc(tmp_path: Path, landing_root: Path) -> None:
    name = CUSTOMERS.files.file_name("2025-11-05", 1, crc32_hex(CONTENT))
    staged = tmp_path / name
    staged.write_bytes(CONTENT)
    received = dt.datetime(2025, 11, 5, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    result = land_file(landing_root, parse_file_name(name), staged, source="sftp", source_uri="u", received_at=received)
    assert result.manifest.received_at == "2025-11-05T07:30:00+00:00"


def test_crc_mismatch_raises_naming_the_file_and_lands_nothing(tmp_path: Path, landing_root: Path) -> None:
    name = "acme_customers_2025-11-05_seq-00001_crc32-DEADBEEF.csv"
    staged = tmp_path / name
    staged.write_bytes(CONTENT)
    with pytest.raises(ChecksumMismatch) as err:
        land_file(landing_root, parse_file_name(name), staged, source="sftp", source_uri="u", received_at=RECEIVED_AT)
    assert str(err.value) == f"{name}: CRC32 of the content is {crc32_hex(CONTENT)}, the file name declares DEADBEEF"
    assert not landing_root.exists()
    assert staged.read_bytes() == CONTENT  # left for the caller to quarantine


def test_truncated_transfer_is_a_crc_mismatch(tmp_path: Path, landing_root: Path) -> None:
    name = CUSTOMERS.files.file_name("2025-11-05", 1, crc32_hex(CONTENT))
    staged = tmp_path / name
    staged.write_bytes(CONTENT[:-10])
    with pytest.raises(ChecksumMismatch, match=name):
        land_file(landing_root, parse_file_name(name), staged, source="sftp", source_uri="u", received_at=RECEIVED_AT)


def test_same_file_twice_is_already_landed(land: Land, landing_root: Path) -> None:
    first = land(CONTENT)
    before = _all_files(landing_root)
    second = land(CONTENT)
    assert second.status == "already_landed"
    assert second.duplicate_of == first.manifest.file_name
    assert second.manifest == first.manifest
    assert _all_files(landing_root) == before


def test_same_content_under_another_name_is_not_landed_twice(land: Land, landing_root: Path) -> None:
    first = land(CONTENT, business_date="2025-11-05", sequence=1)
    before = _all_files(landing_root)
    again = land(CONTENT, business_date="2025-11-06", sequence=2)
    assert again.status == "duplicate_content"
    assert again.duplicate_of == first.manifest.file_name
    assert again.manifest == first.manifest
    assert _all_files(landing_root) == before
    assert landed_files(landing_root, "customers", "2025-11-06") == []


def test_duplicate_staged_copy_is_removed(tmp_path: Path, land: Land, landing_root: Path) -> None:
    land(CONTENT, sequence=1)
    name = CUSTOMERS.files.file_name("2025-11-05", 2, crc32_hex(CONTENT))
    staged = tmp_path / name
    staged.write_bytes(CONTENT)
    result = land_file(
        landing_root, parse_file_name(name), staged, source="sftp", source_uri="u", received_at=RECEIVED_AT
    )
    assert result.status == "duplicate_content"
    assert not staged.exists()


def test_landing_interrupted_before_the_manifest_completes_on_retry(land: Land, landing_root: Path) -> None:
    first = land(CONTENT)
    manifest_path = Path(first.manifest.landed_path + MANIFEST_SUFFIX)
    manifest_path.unlink()  # as if the process died between the move and the manifest
    assert landed_files(landing_root, "customers", "2025-11-05") == []

    retry = land(CONTENT)
    assert retry.status == "landed"
    assert retry.manifest == first.manifest
    assert Manifest.read(manifest_path) == first.manifest
    assert Path(retry.manifest.landed_path).read_bytes() == CONTENT


def test_landed_files_are_in_sequence_order(land: Land, landing_root: Path) -> None:
    for seq in (10, 2, 1, 100):
        land(customers_csv([customer(seq)]), sequence=seq)
    land(customers_csv([customer(7)]), business_date="2025-11-06", sequence=7)
    manifests = landed_files(landing_root, "customers", "2025-11-05")
    assert [m.sequence for m in manifests] == [1, 2, 10, 100]
    assert {m.business_date for m in manifests} == {"2025-11-05"}


def test_landed_files_of_an_empty_partition_is_empty(landing_root: Path) -> None:
    assert landed_files(landing_root, "customers", "2025-11-05") == []
