"""Shared fixtures: a real SFTP server on loopback and a client pinned to its host key, the parsed dbt project,
the platform's paths in a temporary folder."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagster_project import settings
from dagster_project.lib.clients.sftp import SftpClient
from dagster_project.services.sftp_server import EmbeddedSftpServer

# The tests' business dates are fixed (2025-11-03 and around), and the partitions' start is fixed when the
# definitions are first imported: it is set for the whole session here, before any test module imports them.
# Children the tests start inherit it; a test about another start sets its own in a child's environment.
TEST_FIRST_BUSINESS_DATE = "2025-01-01"
os.environ[settings.FIRST_BUSINESS_DATE] = TEST_FIRST_BUSINESS_DATE


@pytest.fixture
def sftp_server(tmp_path: Path) -> Iterator[EmbeddedSftpServer]:
    with EmbeddedSftpServer(tmp_path / "sftp" / "root", tmp_path / "sftp" / "keys", "127.0.0.1", 0) as server:
        yield server


@pytest.fixture
def sftp_client(sftp_server: EmbeddedSftpServer) -> Iterator[SftpClient]:
    with SftpClient(
        sftp_server.host,
        sftp_server.port,
        sftp_server.username,
        sftp_server.client_key_path,
        sftp_server.known_hosts_path,
        timeout=30.0,  # waited out only when the server is broken
        backoff_seconds=0.05,
    ) as client:
        yield client


@pytest.fixture
def platform_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every path the platform writes points into this test's temporary folder."""
    data = tmp_path / "data"
    monkeypatch.setenv("MEDALLION_DATA_DIR", str(data))
    monkeypatch.setenv("MEDALLION_LAKE_ROOT", str(data / "lake"))
    monkeypatch.setenv("DAGSTER_HOME", str(data / "dagster"))
    monkeypatch.setenv("MEDALLION_PII_HMAC_KEY", "test-only-hmac-key-0123456789abcdef")
    return data


@pytest.fixture
def sftp_env(
    platform_env: Path, sftp_server: EmbeddedSftpServer, monkeypatch: pytest.MonkeyPatch
) -> EmbeddedSftpServer:
    """The platform's SFTP settings point at the test's embedded server."""
    monkeypatch.setenv("MEDALLION_SFTP_HOST", sftp_server.host)
    monkeypatch.setenv("MEDALLION_SFTP_PORT", str(sftp_server.port))
    monkeypatch.setenv("MEDALLION_SFTP_USER", sftp_server.username)
    monkeypatch.setenv("MEDALLION_SFTP_PRIVATE_KEY", str(sftp_server.client_key_path))
    monkeypatch.setenv("MEDALLION_SFTP_KNOWN_HOSTS", str(sftp_server.known_hosts_path))
    # Files are taken on the second look and a failed run is asked for again at once: tests that are about
    # the waits set their own.
    monkeypatch.setenv("MEDALLION_SFTP_STABLE_SECONDS", "0")
    monkeypatch.setenv("MEDALLION_SFTP_INTAKE_BACKOFF_SECONDS", "0")
    return sftp_server


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 API on loopback (moto's server, in a process of its own like any object store), shared by
    the session; each test gets its own bucket."""
    import socket
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{endpoint}/moto-api/", timeout=1)
            break
        except httpx.TransportError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto's S3 server did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.1)
    yield endpoint
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture
def s3_lake(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """MEDALLION_LAKE_ROOT on a new bucket of the loopback S3 server, with the standard AWS variables set
    (for this process and every child it starts). Returns the lake URI."""
    import re
    import uuid

    import boto3

    bucket = re.sub(r"[^a-z0-9-]", "-", f"lake-{uuid.uuid4().hex[:8]}-{request.node.name.lower()}")[:63].rstrip("-")
    credentials = {"AWS_ACCESS_KEY_ID": "medallion-test", "AWS_SECRET_ACCESS_KEY": "medallion-test-secret"}
    boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", **{k.lower(): v for k, v in credentials.items()}
    ).create_bucket(Bucket=bucket)
    for name, value in {**credentials, "AWS_ENDPOINT_URL": s3_endpoint, "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ALLOW_HTTP"):
        monkeypatch.delenv(name, raising=False)
    uri = f"s3://{bucket}/lake"
    monkeypatch.setenv("MEDALLION_LAKE_ROOT", uri)
    return uri


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """Under `pytest -n`, the tests that share the PostgreSQL database `test` run on one worker, one at a time.
    A test that takes the S3 server as a fixture is marked `s3` (one that asks for it by parameter is marked
    where the parameter is declared).

    Then, once xdist has seen the groups: under `--dist loadgroup` it tells a group by the `@<group>` it appends
    to each node id, and a pytest that drops it (9.2, pytest-dev/pytest-xdist#1386) would spread each group over
    the workers without a word (two demo runs, two UI webservers, PostgreSQL tests at once on one database).
    The tests of a group that is not honoured fail, saying so."""
    for item in items:
        if item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.xdist_group("postgres"))
        if {"s3_endpoint", "s3_lake"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.s3)
    yield
    if hasattr(config, "workerinput") and config.getvalue("loadgroup"):
        for item in items:
            # named as xdist names them: the first argument, else `name=`, else "default"
            marks = item.iter_markers("xdist_group")
            groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in marks})
            if groups and not item.nodeid.endswith("@" + "_".join(groups)):
                item.stash[_GROUP_NOT_HONOURED] = ", ".join(groups)


_GROUP_NOT_HONOURED = pytest.StashKey[str]()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if group := item.stash.get(_GROUP_NOT_HONOURED, ""):
        pytest.fail(f"xdist_group {group} is not honoured by this pytest and pytest-xdist: it runs on every worker")


def _manifest_is_current(manifest: Path, project_dir: Path) -> bool:
    if not manifest.exists():
        return False
    sources = [p for p in project_dir.rglob("*") if p.suffix in (".sql", ".yml") and "target" not in p.parts]
    return manifest.stat().st_mtime >= max(p.stat().st_mtime for p in sources)


@pytest.fixture(scope="session")
def parsed_manifest() -> Path:
    """The dbt project parsed as the Makefile does (no lake, no warehouse), so the dbt assets can load.

    `make` has parsed it already; it is parsed again only when a model or YAML file is newer than the manifest,
    under a lock, so that test workers never read a manifest another one is writing.
    """
    project_dir = settings.dbt_project_dir()
    manifest = project_dir / "target" / "manifest.json"
    manifest.parent.mkdir(exist_ok=True)
    with (project_dir / "target" / ".parse.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _manifest_is_current(manifest, project_dir):
            env = {k: v for k, v in os.environ.items() if k != "MEDALLION_LAKE_ROOT"}
            subprocess.run(
                [str(Path(sys.executable).with_name("dbt")), "parse", "--quiet"]
                + ["--project-dir", str(project_dir), "--profiles-dir", str(project_dir)],
                check=True,
                cwd=project_dir,
                env=env,
            )
    return manifest
