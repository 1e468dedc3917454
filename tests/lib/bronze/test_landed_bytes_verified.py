"""Bronze loads a landed file only if its bytes still hash to the sha256 its manifest recorded: a landed file
rewritten afterwards fails the load, naming the file and both digests, and leaves bronze and quarantine as
they were; on a local lake and on S3 (the loopback S3 server)."""

from __future__ import annotations

import hashlib
from typing import Any

import obstore
import pytest
from deltalake import DeltaTable

from dagster_project import settings
from dagster_project.lib.bronze.engine import load_partition
from dagster_project.lib.bronze.readers.partner_files import LandedFileChanged, PartnerFilesReader
from dagster_project.lib.checksums import crc32_hex
from dagster_project.lib.intake.landing import land_file, landed_files, landed_key, local_copy
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.naming import parse_file_name
from dagster_project.lib.sources.registry import CUSTOMERS
from tests.lakes import LOCAL_AND_S3
from tests.lib.customer_files import RECEIVED_AT, customer, customers_csv

DAY = "2025-11-05"
LANDED = customers_csv([customer(1), customer(2), customer(3, status="deleted")]).encode()  # 2 good, 1 quarantined
# The same records with one value changed: a file that would load cleanly, were it not checked.
REWRITTEN = LANDED.replace(b"ada.lovelace2@", b"ada.lovelace9@")


@pytest.fixture(params=LOCAL_AND_S3)
def lake(request: pytest.FixtureRequest, tmp_path: Any) -> Lake:
    if request.param == "local":
        return Lake.parse(str(tmp_path / "lake"))
    return Lake.parse(request.getfixturevalue("s3_lake"), settings.lake_storage_options())


def _land(lake: Lake, tmp_path: Any, data: bytes, sequence: int = 1) -> str:
    name = CUSTOMERS.files.file_name(DAY, sequence, crc32_hex(data))
    staged = tmp_path / name
    staged.write_bytes(data)
    land_file(lake, parse_file_name(name), staged, source="sftp", source_uri=f"u/{name}", received_at=RECEIVED_AT)
    return name


def _load(lake: Lake) -> None:
    reader = PartnerFilesReader(CUSTOMERS, landed_files(lake, "customers", DAY), DAY, lake=lake)
    load_partition(CUSTOMERS, reader, lake=lake, run_id="run")


def _state(lake: Lake, layer: str) -> tuple[int, list[dict[str, Any]]]:
    table = DeltaTable(lake.table(layer, "customers"), storage_options=lake.delta_options())
    rows = table.to_pyarrow_table().to_pylist()
    return table.version(), sorted(rows, key=lambda r: (r["_source_file"], r["_source_row"] or 0))


def test_an_untouched_landed_file_loads_stamped_with_its_manifests_sha256(lake: Lake, tmp_path: Any) -> None:
    _land(lake, tmp_path, LANDED)

    _load(lake)

    [manifest] = landed_files(lake, "customers", DAY)
    assert manifest.sha256 == hashlib.sha256(LANDED).hexdigest()
    _, bronze = _state(lake, "bronze")
    _, quarantine = _state(lake, "quarantine")
    assert len(bronze) == 2 and len(quarantine) == 1
    assert {r["_checksum_sha256"] for r in bronze + quarantine} == {manifest.sha256}


def test_a_landed_file_rewritten_after_it_landed_fails_the_load_and_changes_nothing(lake: Lake, tmp_path: Any) -> None:
    _land(lake, tmp_path, LANDED)
    _load(lake)
    before = _state(lake, "bronze"), _state(lake, "quarantine")
    [manifest] = landed_files(lake, "customers", DAY)
    key = landed_key(lake, manifest)
    obstore.put(lake.store, key, REWRITTEN)  # bypassing landing, which never rewrites a landed file

    with pytest.raises(LandedFileChanged) as failure:
        _load(lake)

    message = str(failure.value)
    actual = hashlib.sha256(REWRITTEN).hexdigest()
    assert message.startswith(f"{key}: the landed bytes changed")
    assert f"sha256 {actual}" in message and f"manifest records {manifest.sha256}" in message
    assert "lovelace" not in message  # names the file and the digests, never its content
    assert (_state(lake, "bronze"), _state(lake, "quarantine")) == before


def test_one_rewritten_file_fails_the_whole_partition_even_after_good_files_were_read(
    lake: Lake, tmp_path: Any
) -> None:
    _land(lake, tmp_path, LANDED, sequence=1)
    second = customers_csv([customer(4)]).encode()
    _land(lake, tmp_path, second, sequence=2)
    _load(lake)
    before = _state(lake, "bronze")
    manifests = landed_files(lake, "customers", DAY)
    obstore.put(lake.store, landed_key(lake, manifests[1]), second.replace(b"Ada", b"Eve"))

    with pytest.raises(LandedFileChanged, match=manifests[1].file_name):
        _load(lake)

    assert _state(lake, "bronze") == before


def test_local_copy_checks_the_bytes_against_a_given_sha256_on_every_store(lake: Lake, tmp_path: Any) -> None:
    _land(lake, tmp_path, LANDED)
    [manifest] = landed_files(lake, "customers", DAY)
    key = landed_key(lake, manifest)
    with local_copy(lake, key, sha256=manifest.sha256) as path:
        assert path.read_bytes() == LANDED

    obstore.put(lake.store, key, REWRITTEN)

    with pytest.raises(ValueError, match=f"{key}: the landed bytes changed") as failure:
        with local_copy(lake, key, sha256=manifest.sha256):
            pytest.fail("the path of bytes that do not match is never given")
    assert hashlib.sha256(REWRITTEN).hexdigest() in str(failure.value)
    with local_copy(lake, key) as path:  # without a digest to check, the bytes as they are
        assert path.read_bytes() == REWRITTEN
