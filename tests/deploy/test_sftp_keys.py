"""infra/sftp/generate-keys.sh: the compose stack's SSH keys, with the server's host key pinned.

The script runs here as in the one-shot `sftp-keys` service; the keys it writes are then served by
the platform's embedded SSH server (same file names as the compose SFTP server reads) and used by
the platform's own SFTP client, which must connect with them and refuse any other host key.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from dagster_project.lib.clients.sftp import HostKeyRefused, SftpClient
from dagster_project.services.sftp_server import EmbeddedSftpServer

pytestmark = pytest.mark.sftp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate(repo_root: Path, server_dir: Path, client_dir: Path, host: str, port: int) -> str:
    assert shutil.which("ssh-keygen"), "ssh-keygen (openssh-client) is needed, as in the sftp image"
    result = subprocess.run(
        ["sh", str(repo_root / "infra" / "sftp" / "generate-keys.sh"), str(server_dir), str(client_dir)],
        env={**os.environ, "MEDALLION_SFTP_HOST": host, "MEDALLION_SFTP_PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def client(client_dir: Path, port: int) -> SftpClient:
    return SftpClient(
        "127.0.0.1", port, "acme", client_dir / "id_ed25519", client_dir / "known_hosts", retries=0, timeout=60
    )


def test_generated_keys_are_private_stable_and_named_for_the_compose_host(repo_root: Path, tmp_path: Path) -> None:
    server_dir, client_dir = tmp_path / "server", tmp_path / "client"
    generate(repo_root, server_dir, client_dir, "sftp", 22)
    host_pub = (server_dir / "ssh_host_ed25519_key.pub").read_text().split()
    assert (client_dir / "known_hosts").read_text().split() == ["sftp", host_pub[0], host_pub[1]]
    assert (server_dir / "authorized_keys").read_text() == (client_dir / "id_ed25519.pub").read_text()
    for private in (server_dir / "ssh_host_ed25519_key", client_dir / "id_ed25519"):
        assert private.stat().st_mode & 0o077 == 0, private
    if os.geteuid() == 0:
        # The platform image's user reads the client key.
        assert (client_dir / "id_ed25519").stat().st_uid == 10001

    before = {p.name: p.read_bytes() for p in [*server_dir.iterdir(), *client_dir.iterdir()]}
    generate(repo_root, server_dir, client_dir, "sftp", 22)
    after = {p.name: p.read_bytes() for p in [*server_dir.iterdir(), *client_dir.iterdir()]}
    assert after == before, "a second run must keep the pinned keys"

    generate(repo_root, server_dir, client_dir, "sftp.partner.example", 2222)
    assert (client_dir / "known_hosts").read_text().startswith("[sftp.partner.example]:2222 ssh-ed25519 ")


def test_platform_client_connects_with_the_keys_and_refuses_another_host_key(repo_root: Path, tmp_path: Path) -> None:
    port = free_port()
    server_dir, client_dir = tmp_path / "server", tmp_path / "client"
    generate(repo_root, server_dir, client_dir, "127.0.0.1", port)
    with EmbeddedSftpServer(tmp_path / "root", server_dir, port=port):
        with client(client_dir, port) as sftp:
            assert sftp.exists("inbox") and sftp.list_dir("inbox") == []

    # Same address, another host key (a server that was replaced or an impostor): refused.
    impostor_dir = tmp_path / "impostor"
    generate(repo_root, impostor_dir, tmp_path / "impostor-client", "127.0.0.1", port)
    shutil.copy(client_dir / "id_ed25519.pub", impostor_dir / "authorized_keys")
    with EmbeddedSftpServer(tmp_path / "root", impostor_dir, port=port):
        with pytest.raises(HostKeyRefused):
            with client(client_dir, port) as sftp:
                sftp.list_dir(".")
