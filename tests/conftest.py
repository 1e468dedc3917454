"""Shared fixtures: a real SFTP server on loopback and a client pinned to its host key, the parsed dbt project,
the platform's paths in a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagster_project import settings
from dagster_project.lib.clients.sftp import SftpClient
from dagster_project.services.sftp_server import EmbeddedSftpServer


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
        timeout=5.0,
        backoff_seconds=0.05,
    ) as client:
        yield client


@pytest.fixture
def platform_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every path the platform writes points into this test's temporary folder."""
    data = tmp_path / "data"
    monkeypatch.setenv("MEDALLION_DATA_DIR", str(data))
    monkeypatch.setenv("MEDALLION_LAKE_ROOT", str(data / "lake"))
    monkeypatch.setenv("MEDALLION_WAREHOUSE_PATH", str(data / "warehouse.duckdb"))
    monkeypatch.setenv("DAGSTER_HOME", str(data / "dagster"))
    monkeypatch.setenv("MEDALLION_PII_HMAC_KEY", "test-only-hmac-key")
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
    return sftp_server


@pytest.fixture(scope="session")
def parsed_manifest() -> Path:
    """Parse the dbt project as the Makefile does (no lake, no warehouse), so the dbt assets can load.

    dbt's partial parsing makes this quick when `make` has parsed the same project already.
    """
    project_dir = settings.dbt_project_dir()
    env = {k: v for k, v in os.environ.items() if k not in ("MEDALLION_LAKE_ROOT", "MEDALLION_WAREHOUSE_PATH")}
    subprocess.run(
        [str(Path(sys.executable).with_name("dbt")), "parse", "--quiet"]
        + ["--project-dir", str(project_dir), "--profiles-dir", str(project_dir)],
        check=True,
        cwd=project_dir,
        env=env,
    )
    return project_dir / "target" / "manifest.json"
