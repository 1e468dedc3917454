from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from dagster_project.lib.clients.sftp import SftpClient
from dagster_project.services.sftp_server import (
    AUTHORIZED_KEYS,
    CLIENT_KEY,
    HOST_KEY,
    EmbeddedSftpServer,
    generate_keys,
    write_known_hosts,
)

pytestmark = pytest.mark.sftp


def test_generate_keys_is_idempotent_and_private_keys_are_0600(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    generate_keys(keys)
    before = {p.name: p.read_bytes() for p in keys.iterdir()}
    generate_keys(keys)
    after = {p.name: p.read_bytes() for p in keys.iterdir()}

    assert before == after
    assert set(after) == {HOST_KEY, HOST_KEY + ".pub", CLIENT_KEY, CLIENT_KEY + ".pub", AUTHORIZED_KEYS}
    for name in (HOST_KEY, CLIENT_KEY):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600
    client_public = (keys / (CLIENT_KEY + ".pub")).read_text().strip()
    assert (keys / AUTHORIZED_KEYS).read_text().splitlines() == [client_public]
    assert paramiko.PKey.from_path(keys / CLIENT_KEY).get_name() == "ssh-ed25519"


def test_generate_keys_restores_a_lost_authorized_keys_entry(tmp_path: Path) -> None:
    generate_keys(tmp_path)
    (tmp_path / AUTHORIZED_KEYS).write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherKeyForSomeoneElse x\n")
    generate_keys(tmp_path)
    lines = (tmp_path / AUTHORIZED_KEYS).read_text().splitlines()
    assert len(lines) == 2 and lines[1] == (tmp_path / (CLIENT_KEY + ".pub")).read_text().strip()


@pytest.mark.parametrize(("port", "pattern"), [(22, "127.0.0.1"), (2222, "[127.0.0.1]:2222")])
def test_known_hosts_is_port_qualified_openssh_format(tmp_path: Path, port: int, pattern: str) -> None:
    generate_keys(tmp_path)
    path = write_known_hosts(tmp_path, "127.0.0.1", port)
    assert path.read_text().split()[0] == pattern
    pinned = paramiko.HostKeys(str(path)).lookup(pattern)
    assert pinned is not None
    assert pinned["ssh-ed25519"] == paramiko.PKey.from_path(tmp_path / HOST_KEY)


def test_server_creates_the_drop_folders_and_pins_its_real_port(sftp_server: EmbeddedSftpServer) -> None:
    assert sftp_server.port != 0
    assert sorted(p.name for p in sftp_server.root.iterdir()) == ["archive", "inbox", "quarantine"]
    assert sftp_server.known_hosts_path.read_text().startswith(f"[127.0.0.1]:{sftp_server.port} ssh-ed25519 ")


def test_sessions_are_jailed_in_the_root(
    sftp_server: EmbeddedSftpServer, sftp_client: SftpClient, tmp_path: Path
) -> None:
    sftp_client.write_bytes("../../../escape.csv", b"x")
    assert (sftp_server.root / "escape.csv").read_bytes() == b"x"
    assert not (tmp_path / "escape.csv").exists() and not (sftp_server.root.parent / "escape.csv").exists()
    assert sftp_client.list_dir("/") == sftp_client.list_dir("/../..")


def test_only_sftp_is_offered(sftp_server: EmbeddedSftpServer) -> None:
    ssh = paramiko.SSHClient()
    ssh.load_host_keys(str(sftp_server.known_hosts_path))
    ssh.connect(
        sftp_server.host,
        sftp_server.port,
        sftp_server.username,
        pkey=paramiko.PKey.from_path(sftp_server.client_key_path),
        look_for_keys=False,
        allow_agent=False,
    )
    try:
        with pytest.raises(paramiko.SSHException):
            ssh.exec_command("id", timeout=60)
        with pytest.raises(paramiko.ChannelException):  # no port forwarding, even to itself
            ssh.get_transport().open_channel(  # type: ignore[union-attr]
                "direct-tcpip", (sftp_server.host, sftp_server.port), ("127.0.0.1", 0)
            )
    finally:
        ssh.close()


def test_stop_is_quick_and_releases_the_port(sftp_server: EmbeddedSftpServer, sftp_client: SftpClient) -> None:
    sftp_client.list_dir("inbox")  # an open session must not hold the server up
    # stop() closes the sessions itself and waits at most 10 s for that before it raises, so a session that
    # held it up fails here as an error, not as a duration that depends on the machine's load.
    sftp_server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((sftp_server.host, sftp_server.port), timeout=2).close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_forever_serves_until_sigterm(tmp_path: Path) -> None:
    root, keys, port = tmp_path / "root", tmp_path / "keys", _free_port()
    code = (
        "import logging, sys; from pathlib import Path; logging.basicConfig(level=logging.INFO);"
        "from dagster_project.services.sftp_server import serve_forever;"
        f"serve_forever(Path({str(root)!r}), Path({str(keys)!r}), '127.0.0.1', {port}, 'acme')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120  # waited out only when the server is broken, not when it is slow
        while not (keys / "known_hosts").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with SftpClient("127.0.0.1", port, "acme", keys / CLIENT_KEY, keys / "known_hosts") as client:
            client.write_bytes("inbox/a.csv", b"a")
        assert (root / "inbox" / "a.csv").read_bytes() == b"a"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    assert f"listening on 127.0.0.1:{port}" in err
