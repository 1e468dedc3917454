"""The lake root is a URI: local paths and object stores work the same way; anything else is refused."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import duckdb
import obstore
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from dagster_project import settings
from dagster_project.lib.lake import Lake, LakeError
from tests.lakes import LOCAL_AND_S3


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("s3:/bucket/lake", "looks like a URI"),
        ("s3://", "names no bucket"),
        ("ftp://host/lake", "not supported"),
        ("http://minio:9000/lake", "not supported"),
        ("s3://key:secret@bucket/lake", "never from the URI"),
        ("s3://bucket/../etc", "plain path segments"),
        ("   ", "empty"),
    ],
)
def test_a_lake_root_the_platform_cannot_use_is_refused_with_the_reason(value: str, message: str) -> None:
    with pytest.raises(LakeError, match=message):
        Lake.parse(value)


def test_an_object_store_root_is_never_turned_into_a_local_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDALLION_LAKE_ROOT", "s3://acme-lake/prod/")
    lake = settings.lake()
    assert lake.root == "s3://acme-lake/prod" and not lake.is_local
    assert lake.table("bronze", "customers") == "s3://acme-lake/prod/bronze/customers"
    assert lake.relative("s3://acme-lake/prod/landing/x.csv") == "landing/x.csv"
    assert list(tmp_path.iterdir()) == []


def test_an_adls_root_may_name_its_account_but_never_credentials() -> None:
    assert Lake.parse("abfss://lake@acme.dfs.core.windows.net/medallion").family == "az"
    with pytest.raises(LakeError, match="never from the URI"):
        Lake.parse("abfss://user:password@acme.dfs.core.windows.net/medallion")


def test_a_local_root_is_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Lake.parse("lake").root == str(tmp_path / "lake")
    assert Lake.parse(f"file://{tmp_path}/lake").root == str(tmp_path / "lake")


def test_credentials_are_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDALLION_LAKE_ROOT", "s3://acme-lake/prod")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    lake = settings.lake()
    assert lake.storage_options["AWS_SECRET_ACCESS_KEY"] == "very-secret-value"
    assert "very-secret-value" not in repr(lake)


def test_plain_http_is_allowed_only_for_a_loopback_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert settings.lake_storage_options()["AWS_ALLOW_HTTP"] == "true"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.internal:9000")
    assert "AWS_ALLOW_HTTP" not in settings.lake_storage_options()


@pytest.mark.parametrize("where", LOCAL_AND_S3)
def test_every_library_reaches_the_same_lake(where: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Landing objects (obstore, put-if-absent), Delta tables (deltalake) and pruned reads (DuckDB)."""
    root = str(tmp_path / "lake") if where == "local" else request.getfixturevalue("s3_lake")
    lake = Lake.parse(root, settings.lake_storage_options() if where == "s3" else {})

    obstore.put(lake.store, "landing/a.csv", b"first", mode="create")
    with pytest.raises(Exception, match="(?i)exist"):
        obstore.put(lake.store, "landing/a.csv", b"second", mode="create")
    assert bytes(obstore.get(lake.store, "landing/a.csv").bytes()) == b"first"

    uri = lake.table("bronze", "t")
    for day in range(5):
        date = dt.date(2025, 1, 1) + dt.timedelta(days=day)
        write_deltalake(
            uri,
            pa.table({"business_date": [date] * 10, "v": list(range(10))}),
            partition_by=["business_date"],
            mode="append",
            storage_options=lake.delta_options(),
        )
    assert DeltaTable(uri, storage_options=lake.delta_options()).version() == 4

    con = duckdb.connect()
    lake.configure_duckdb(con)
    plan = con.execute(
        f"explain analyze select count(*) from {lake.duckdb_scan(uri)} where business_date = date '2025-01-03'"
    ).fetchall()[0][1]
    assert "Scanning Files: 1/5" in plan
    assert con.execute(f"select count(*) from {lake.duckdb_scan(uri)}").fetchone() == (50,)


@pytest.fixture
def unverified(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[int, ...]]:
    """This process as if no DuckDB extension had been verified in it yet."""
    from dagster_project.lib import lake as lake_module

    verified: dict[str, tuple[int, ...]] = {}
    monkeypatch.setattr(lake_module, "_VERIFIED", verified)
    return verified


def _signature_checked(con: duckdb.DuckDBPyConnection) -> bool:
    [(allowed,)] = con.execute("select current_setting('allow_unsigned_extensions')").fetchall()
    [(loaded,)] = con.execute("select loaded from duckdb_extensions() where extension_name = 'delta'").fetchall()
    assert loaded
    return not allowed


def test_an_extension_is_verified_once_per_process_and_again_once_its_file_changed(unverified: dict):
    from dagster_project.lib.lake import connect_duckdb, duckdb_extension_path

    with connect_duckdb(["delta"]) as first, connect_duckdb(["delta"]) as second:
        assert _signature_checked(first) and not _signature_checked(second)

    # The file is no longer the one verified: checked again before it is trusted again.
    path = duckdb_extension_path("delta")
    size, inode, written, changed = unverified[path]
    unverified[path] = (size, inode, written, changed - 1)
    with connect_duckdb(["delta"]) as third, connect_duckdb(["delta"]) as fourth:
        assert _signature_checked(third) and not _signature_checked(fourth)


def test_a_file_changed_in_place_and_given_its_old_times_back_is_a_changed_file(tmp_path: Path):
    from dagster_project.lib.lake import _file_identity

    path = tmp_path / "extension"
    path.write_bytes(b"0" * 1024)
    before = path.stat()
    identity = _file_identity(str(path))
    # A file system whose clock is coarse (a tick of a few ms, kernels before 6.13) gives a change in the same
    # tick the same change time: the change below comes after the clock has moved on, as any real one does.
    probe = tmp_path / "probe"
    while True:
        probe.write_bytes(b"")
        if probe.stat().st_ctime_ns > before.st_ctime_ns:
            break
    with path.open("r+b") as f:  # one byte changed, the size kept...
        f.seek(512)
        f.write(b"1")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # ...and its times set back
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    assert _file_identity(str(path)) != identity


def test_an_extension_whose_bytes_changed_is_refused_by_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unverified: dict
):
    from dagster_project.lib import lake as lake_module

    tampered = tmp_path / "delta.duckdb_extension"
    shutil.copyfile(lake_module.duckdb_extension_path("delta"), tampered)
    with tampered.open("r+b") as f:
        f.seek(tampered.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(lake_module, "duckdb_extension_path", lambda name: str(tampered))

    with pytest.raises(duckdb.Error, match="signature"):
        lake_module.connect_duckdb(["delta"])
    assert unverified == {}  # and not trusted after


def test_a_lake_connection_reads_delta_tables_in_place(tmp_path: Path):
    lake = Lake.parse(str(tmp_path / "lake"))
    uri = lake.table("bronze", "t")
    write_deltalake(uri, pa.table({"v": [1, 2, 3]}))
    for _ in range(2):  # the first may verify the extension, the second trusts it
        with lake.connect() as con:
            assert con.execute(f"select sum(v) from {lake.duckdb_scan(uri)}").fetchone() == (6,)
