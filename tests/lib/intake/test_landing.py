"""Landing keeps every received file byte for byte, with a manifest, once per content, never rewritten:
on a local lake and on an S3 bucket (the loopback S3 server) alike."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path

import obstore
import pytest

from dagster_project import settings
from dagster_project.lib.checksums import crc32_hex
from dagster_project.lib.intake import landing
from dagster_project.lib.intake.landing import (
    MANIFEST_SUFFIX,
    ChecksumMismatch,
    LandingConflict,
    LandResult,
    Manifest,
    find_by_sha256,
    index_feed,
    land_file,
    landed_files,
    landed_key,
    partition_prefix,
)
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.naming import parse_file_name
from dagster_project.lib.sources.registry import CUSTOMERS
from tests.lakes import LOCAL_AND_S3
from tests.lib.customer_files import RECEIVED_AT, customer, customers_csv, same_crc32

Land = Callable[..., LandResult]
CONTENT = customers_csv([customer(1), customer(2)]).encode()
PARTITION = partition_prefix("customers", "2025-11-05")


@pytest.fixture(params=LOCAL_AND_S3)
def landing_lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    if request.param == "local":
        return Lake.parse(str(tmp_path / "lake"))
    return Lake.parse(request.getfixturevalue("s3_lake"), settings.lake_storage_options())


def _objects(lake: Lake, prefix: str = "") -> list[str]:
    return sorted(meta["path"] for batch in obstore.list(lake.store, prefix or None) for meta in batch)


def _read(lake: Lake, key: str) -> bytes:
    return bytes(obstore.get(lake.store, key).bytes())


def _stage(tmp_path: Path, data: bytes, *, business_date: str = "2025-11-05", sequence: int = 1) -> Path:
    staged = tmp_path / "staged" / CUSTOMERS.files.file_name(business_date, sequence, crc32_hex(data))
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(data)
    return staged


def _land_staged(lake: Lake, staged: Path, received_at: dt.datetime = RECEIVED_AT) -> LandResult:
    return land_file(lake, parse_file_name(staged.name), staged, source="sftp", source_uri="u", received_at=received_at)


def test_landed_file_keeps_the_bytes_under_its_partition(land: Land, landing_lake: Lake) -> None:
    result = land(CONTENT, business_date="2025-11-05", sequence=3)
    name = CUSTOMERS.files.file_name("2025-11-05", 3, crc32_hex(CONTENT))
    assert result.status == "landed"
    assert result.duplicate_of is None
    assert _read(landing_lake, f"{PARTITION}/{name}") == CONTENT
    assert _objects(landing_lake, PARTITION + "/") == [f"{PARTITION}/{name}", f"{PARTITION}/{name}{MANIFEST_SUFFIX}"]
    assert _objects(landing_lake, "landing/_uploads/") == []


def test_staged_file_is_removed_once_landed(tmp_path: Path, landing_lake: Lake) -> None:
    staged = _stage(tmp_path, CONTENT)
    _land_staged(landing_lake, staged)
    assert not staged.exists()


def test_manifest_describes_the_landed_file_with_a_lake_relative_path(land: Land, landing_lake: Lake) -> None:
    result = land(CONTENT, business_date="2025-11-05", sequence=3)
    name = CUSTOMERS.files.file_name("2025-11-05", 3, crc32_hex(CONTENT))
    stored = _read(landing_lake, f"{PARTITION}/{name}{MANIFEST_SUFFIX}")
    assert json.loads(stored) == {
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
        "landed_path": f"{PARTITION}/{name}",
    }
    assert Manifest.from_json(stored) == result.manifest


def test_received_at_with_an_offset_is_stored_in_utc(tmp_path: Path, landing_lake: Lake) -> None:
    received = dt.datetime(2025, 11, 5, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    result = _land_staged(landing_lake, _stage(tmp_path, CONTENT), received)
    assert result.manifest.received_at == "2025-11-05T07:30:00+00:00"


def test_crc_mismatch_raises_naming_the_file_and_lands_nothing(tmp_path: Path, landing_lake: Lake) -> None:
    name = "acme_customers_2025-11-05_seq-00001_crc32-DEADBEEF.csv"
    staged = tmp_path / name
    staged.write_bytes(CONTENT)
    with pytest.raises(ChecksumMismatch) as err:
        _land_staged(landing_lake, staged)
    assert str(err.value) == f"{name}: CRC32 of the content is {crc32_hex(CONTENT)}, the file name declares DEADBEEF"
    assert _objects(landing_lake) == []
    assert staged.read_bytes() == CONTENT  # left for the caller to quarantine


def test_truncated_transfer_is_a_crc_mismatch(tmp_path: Path, landing_lake: Lake) -> None:
    staged = _stage(tmp_path, CONTENT)
    staged.write_bytes(CONTENT[:-10])
    with pytest.raises(ChecksumMismatch, match=staged.name):
        _land_staged(landing_lake, staged)


def test_same_file_twice_is_already_landed(land: Land, landing_lake: Lake) -> None:
    first = land(CONTENT)
    before = _objects(landing_lake)
    second = land(CONTENT)
    assert second.status == "already_landed"
    assert second.duplicate_of == first.manifest.file_name
    assert second.manifest == first.manifest
    assert _objects(landing_lake) == before


def test_same_content_under_another_name_is_not_landed_twice(land: Land, landing_lake: Lake) -> None:
    first = land(CONTENT, business_date="2025-11-05", sequence=1)
    before = _objects(landing_lake)
    again = land(CONTENT, business_date="2025-11-06", sequence=2)
    assert again.status == "duplicate_content"
    assert again.duplicate_of == first.manifest.file_name
    assert again.manifest == first.manifest
    assert _objects(landing_lake) == before
    assert landed_files(landing_lake, "customers", "2025-11-06") == []
    assert find_by_sha256(landing_lake, "customers", hashlib.sha256(CONTENT).hexdigest()) == first.manifest


def test_duplicate_staged_copy_is_removed(tmp_path: Path, land: Land, landing_lake: Lake) -> None:
    land(CONTENT, sequence=1)
    staged = _stage(tmp_path, CONTENT, sequence=2)
    assert _land_staged(landing_lake, staged).status == "duplicate_content"
    assert not staged.exists()


def test_other_bytes_under_a_landed_name_are_refused_and_the_landed_file_stays(
    tmp_path: Path, land: Land, landing_lake: Lake
) -> None:
    first = land(CONTENT)
    before = {key: _read(landing_lake, key) for key in _objects(landing_lake)}
    other = same_crc32(CONTENT, customers_csv([customer(3)]).encode())
    staged = _stage(tmp_path, other)
    assert staged.name == first.manifest.file_name  # same name, same declared CRC32, other bytes

    with pytest.raises(LandingConflict, match=f"{staged.name}: already landed with different content"):
        _land_staged(landing_lake, staged)

    assert {key: _read(landing_lake, key) for key in _objects(landing_lake)} == before
    assert find_by_sha256(landing_lake, "customers", hashlib.sha256(other).hexdigest()) is None
    assert staged.read_bytes() == other  # kept for the caller to quarantine


def test_an_object_already_at_the_place_with_other_bytes_is_never_overwritten(
    tmp_path: Path, landing_lake: Lake
) -> None:
    staged = _stage(tmp_path, CONTENT)
    key = f"{PARTITION}/{staged.name}"
    obstore.put(landing_lake.store, key, b"someone else's bytes")

    with pytest.raises(LandingConflict):
        _land_staged(landing_lake, staged)

    assert _read(landing_lake, key) == b"someone else's bytes"
    assert landed_files(landing_lake, "customers", "2025-11-05") == []
    assert _objects(landing_lake, "landing/_uploads/") == []


def test_crash_between_the_file_and_its_manifest_is_completed_by_the_retry(
    land: Land, landing_lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(*args: object) -> bool:
        raise RuntimeError("killed before the manifest")

    monkeypatch.setattr(landing, "_write_manifest", killed)
    with pytest.raises(RuntimeError, match="killed"):
        land(CONTENT)
    name = CUSTOMERS.files.file_name("2025-11-05", 1, crc32_hex(CONTENT))
    assert _objects(landing_lake, PARTITION + "/") == [f"{PARTITION}/{name}"]  # the file, no manifest:
    assert landed_files(landing_lake, "customers", "2025-11-05") == []  # not landed

    monkeypatch.undo()
    retry = land(CONTENT)
    assert retry.status == "landed"
    assert landed_files(landing_lake, "customers", "2025-11-05") == [retry.manifest]
    assert _read(landing_lake, landed_key(landing_lake, retry.manifest)) == CONTENT


def test_same_bytes_under_another_name_after_a_crash_finish_the_first_landing(
    tmp_path: Path, landing_lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first delivery claimed the content and died before uploading; a re-delivery under another name
    lands the bytes where the first one meant to, once, instead of landing them twice."""

    def killed(*args: object) -> None:
        raise RuntimeError("killed before the upload")

    monkeypatch.setattr(landing, "_put_file", killed)
    with pytest.raises(RuntimeError):
        _land_staged(landing_lake, _stage(tmp_path, CONTENT, sequence=1))
    monkeypatch.undo()

    again = _land_staged(landing_lake, _stage(tmp_path, CONTENT, sequence=2))

    first_name = CUSTOMERS.files.file_name("2025-11-05", 1, crc32_hex(CONTENT))
    assert (again.status, again.duplicate_of) == ("duplicate_content", first_name)
    [landed] = landed_files(landing_lake, "customers", "2025-11-05")
    assert landed.file_name == first_name
    assert _read(landing_lake, landed_key(landing_lake, landed)) == CONTENT


@pytest.mark.parametrize("same_name", [True, False])
def test_concurrent_landings_of_one_content_land_it_once(tmp_path: Path, landing_lake: Lake, same_name: bool) -> None:
    copies = [_stage(tmp_path / str(i), CONTENT, sequence=1 if same_name else i + 1) for i in range(2)]
    start = threading.Barrier(len(copies))
    results: list[LandResult] = []

    def deliver(staged: Path) -> None:
        start.wait()
        results.append(_land_staged(landing_lake, staged))

    threads = [threading.Thread(target=deliver, args=(staged,)) for staged in copies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # One delivery claims the content. A delivery under another name is a duplicate of it; the claimer (and
    # each same-name delivery) says "landed" unless the other had written the manifest before it looked.
    statuses = sorted(r.status for r in results)
    if same_name:
        assert "landed" in statuses and set(statuses) <= {"landed", "already_landed"}
    else:
        assert statuses in (["duplicate_content", "landed"], ["already_landed", "duplicate_content"])
    [landed] = landed_files(landing_lake, "customers", "2025-11-05")
    assert all(r.manifest == landed for r in results)
    assert len([k for k in _objects(landing_lake, PARTITION + "/") if not k.endswith(MANIFEST_SUFFIX)]) == 1
    assert _objects(landing_lake, "landing/_uploads/") == []


def test_landed_files_are_in_sequence_order(land: Land, landing_lake: Lake) -> None:
    for seq in (10, 2, 1, 100):
        land(customers_csv([customer(seq)]), sequence=seq)
    land(customers_csv([customer(7)]), business_date="2025-11-06", sequence=7)
    manifests = landed_files(landing_lake, "customers", "2025-11-05")
    assert [m.sequence for m in manifests] == [1, 2, 10, 100]
    assert {m.business_date for m in manifests} == {"2025-11-05"}


def test_landed_files_of_an_empty_partition_is_empty(landing_lake: Lake) -> None:
    assert landed_files(landing_lake, "customers", "2025-11-05") == []


# --- manifests written before the lake was a URI -----------------------------------------------------------


def _legacy_landing(lake_root: Path, data: bytes) -> Manifest:
    """A file and manifest as landing wrote them before: an absolute landed_path, no content index."""
    name = CUSTOMERS.files.file_name("2025-11-05", 1, crc32_hex(data))
    folder = lake_root / "landing" / "customers" / "business_date=2025-11-05"
    folder.mkdir(parents=True)
    (folder / name).write_bytes(data)
    manifest = Manifest(
        feed="customers",
        file_name=name,
        business_date="2025-11-05",
        sequence=1,
        size=len(data),
        crc32=crc32_hex(data),
        sha256=hashlib.sha256(data).hexdigest(),
        schema_version=1,
        source="sftp",
        source_uri="u",
        received_at=RECEIVED_AT.isoformat(),
        landed_path=str(folder / name),
    )
    (folder / f"{name}{MANIFEST_SUFFIX}").write_bytes(manifest.to_json())
    return manifest


def test_an_old_manifest_with_an_absolute_path_inside_the_lake_is_read_and_indexed(tmp_path: Path) -> None:
    legacy = _legacy_landing(tmp_path / "lake", CONTENT)
    lake = Lake.parse(str(tmp_path / "lake"))

    [manifest] = landed_files(lake, "customers", "2025-11-05")
    assert landed_key(lake, manifest) == f"{PARTITION}/{legacy.file_name}"

    again = _land_staged(lake, _stage(tmp_path, CONTENT, sequence=2))  # the first landing indexes the feed
    assert (again.status, again.duplicate_of) == ("duplicate_content", legacy.file_name)
    assert index_feed(lake, "customers") == 0  # already indexed: nothing to add


def test_an_old_manifest_pointing_outside_the_lake_is_refused_clearly(tmp_path: Path) -> None:
    legacy = _legacy_landing(tmp_path / "original", CONTENT)
    lake = Lake.parse(str(tmp_path / "restored"))
    with pytest.raises(ValueError, match="outside the lake") as err:
        landed_key(lake, legacy)
    assert f"{PARTITION}/{legacy.file_name}" in str(err.value)
    with pytest.raises(ValueError, match="not a lake-relative path"):
        landed_key(lake, dataclasses.replace(legacy, landed_path="landing/../../etc/passwd"))
