"""Shared fixtures: a real SFTP server on loopback and a client pinned to its host key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dagster_project.lib.sftp import SftpClient
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
