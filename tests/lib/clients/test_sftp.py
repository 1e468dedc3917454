from __future__ import annotations

import os
import time
from pathlib import Path

import asyncssh
import paramiko
import pytest

from dagster_project import settings
from dagster_project.lib.clients.sftp import AuthenticationRefused, HostKeyRefused, RemoteEntry, RemoteFile, SftpClient
from dagster_project.services.sftp_server import EmbeddedSftpServer

pytestmark = pytest.mark.sftp


def client_for(server: EmbeddedSftpServer, **overrides: object) -> SftpClient:
    args: dict[str, object] = {
        "host": server.host,
        "port": server.port,
        "username": server.username,
        "private_key_path": server.client_key_path,
        "known_hosts_path": server.known_hosts_path,
        "timeout": 30.0,  # waited out only when the server is broken
        "backoff_seconds": 0.05,
    }
    args.update(overrides)
    return SftpClient(**args)  # type: ignore[arg-type]


def other_key(path: Path) -> asyncssh.SSHKey:
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.write_bytes(key.export_private_key())
    os.chmod(path, 0o600)
    return key


def host_key_blob(server: EmbeddedSftpServer) -> str:
    return server.known_hosts_path.read_text().split()[2]


# -- transfers ----------------------------------------------------------------------------------------------


def test_round_trip_upload_list_download_move(
    sftp_server: EmbeddedSftpServer, sftp_client: SftpClient, tmp_path: Path
) -> None:
    payload = os.urandom(300_000) + b"\r\nend\x00"
    local = tmp_path / "acme_customers.csv"
    local.write_bytes(payload)
    (sftp_server.root / "inbox" / "a_subdir").mkdir()

    assert sftp_client.upload(local, "inbox/acme_customers.csv") == len(payload)
    sftp_client.write_bytes("inbox/b.csv", b"b")

    listing = sftp_client.list_dir("inbox")
    assert [f.name for f in listing] == ["acme_customers.csv", "b.csv"]  # sorted, directories left out
    assert listing[0] == RemoteFile("acme_customers.csv", len(payload), listing[0].mtime)
    assert abs(listing[0].mtime - time.time()) < 60

    target = tmp_path / "down" / "copy.csv"
    assert sftp_client.download("inbox/acme_customers.csv", target) == len(payload)
    assert target.read_bytes() == payload
    assert sorted(p.name for p in target.parent.iterdir()) == ["copy.csv"]  # no temporary file left

    sftp_client.move("inbox/acme_customers.csv", "archive/acme_customers.csv")
    assert not sftp_client.exists("inbox/acme_customers.csv")
    assert sftp_client.exists("archive/acme_customers.csv")
    assert (sftp_server.root / "archive" / "acme_customers.csv").read_bytes() == payload


def test_move_and_write_replace_an_existing_target(sftp_server: EmbeddedSftpServer, sftp_client: SftpClient) -> None:
    sftp_client.write_bytes("archive/f.csv", b"old")
    sftp_client.write_bytes("inbox/f.csv", b"first")
    sftp_client.write_bytes("inbox/f.csv", b"second")
    sftp_client.move("inbox/f.csv", "archive/f.csv")
    assert (sftp_server.root / "archive" / "f.csv").read_bytes() == b"second"
    assert sftp_client.list_dir("inbox") == []


def test_missing_remote_file_is_an_error_not_a_retry(sftp_server: EmbeddedSftpServer, tmp_path: Path) -> None:
    waits: list[float] = []
    with client_for(sftp_server, sleep=waits.append) as client:
        with pytest.raises(FileNotFoundError):
            client.download("inbox/nope.csv", tmp_path / "down" / "nope.csv")
        with pytest.raises(FileNotFoundError):
            client.move("inbox/nope.csv", "archive/nope.csv")
        assert client.connections_opened == 1
    assert waits == []  # no backoff either
    assert list((tmp_path / "down").iterdir()) == []  # no temporary file left behind


def test_upload_shows_only_the_part_name_until_complete(
    sftp_server: EmbeddedSftpServer, sftp_client: SftpClient, tmp_path: Path
) -> None:
    local = tmp_path / "big.csv"
    local.write_bytes(os.urandom(1_000_000))
    seen: list[list[str]] = []

    with client_for(sftp_server) as reader:

        def look(sent: int, total: int) -> None:
            if sent < total:
                seen.append([f.name for f in reader.list_dir("inbox")])

        sftp_client.upload(local, "inbox/big.csv", progress=look)
        after = [f.name for f in reader.list_dir("inbox")]

    assert seen, "the upload finished before it could be observed"
    assert all(names == ["big.csv.part"] for names in seen)
    assert after == ["big.csv"]


def test_interrupted_upload_never_appears_under_the_final_name(
    sftp_server: EmbeddedSftpServer, sftp_client: SftpClient, tmp_path: Path
) -> None:
    local = tmp_path / "big.csv"
    local.write_bytes(os.urandom(1_000_000))

    def interrupt(sent: int, total: int) -> None:
        raise RuntimeError("sender died")

    with pytest.raises(RuntimeError, match="sender died"):
        sftp_client.upload(local, "inbox/big.csv", progress=interrupt)
    assert sftp_client.connections_opened == 1  # not a network failure: not retried

    inbox = sftp_server.root / "inbox"
    assert sorted(p.name for p in inbox.iterdir()) == ["big.csv.part"]
    assert (inbox / "big.csv.part").stat().st_size < 1_000_000


# -- host key pinning and authentication -------------------------------------------------------------------


def assert_refused_cleanly(error: HostKeyRefused, server: EmbeddedSftpServer) -> None:
    message = str(error)
    assert f"{server.host}:{server.port}" in message
    assert "not in the pinned known_hosts file" in message
    assert "SHA256:" in message
    assert host_key_blob(server) not in message
    # No chained paramiko exception either: its message carries the full keys.
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_empty_known_hosts_is_refused(sftp_server: EmbeddedSftpServer, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    client = client_for(sftp_server, known_hosts_path=known_hosts)
    with pytest.raises(HostKeyRefused) as refused:
        client.connect()
    assert_refused_cleanly(refused.value, sftp_server)
    assert client.connections_opened == 1
    assert known_hosts.read_text() == ""  # nothing learnt on first use


def test_missing_known_hosts_file_is_refused(sftp_server: EmbeddedSftpServer, tmp_path: Path) -> None:
    client = client_for(sftp_server, known_hosts_path=tmp_path / "absent")
    with pytest.raises(HostKeyRefused):
        client.list_dir("inbox")
    assert not (tmp_path / "absent").exists()


def test_host_key_different_from_the_pinned_one_is_refused(sftp_server: EmbeddedSftpServer, tmp_path: Path) -> None:
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{sftp_server.host}]:{sftp_server.port} {impostor[0]} {impostor[1]}\n")
    client = client_for(sftp_server, known_hosts_path=known_hosts)
    with pytest.raises(HostKeyRefused) as refused:
        client.list_dir("inbox")
    assert_refused_cleanly(refused.value, sftp_server)
    assert impostor[1] not in str(refused.value)
    assert client.connections_opened == 1


def test_pinned_key_is_bound_to_host_and_port(sftp_server: EmbeddedSftpServer, tmp_path: Path) -> None:
    kind, blob = sftp_server.known_hosts_path.read_text().split()[1:3]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{sftp_server.host}]:{sftp_server.port + 1} {kind} {blob}\n")
    with pytest.raises(HostKeyRefused):
        client_for(sftp_server, known_hosts_path=known_hosts).connect()


def test_system_known_hosts_is_never_consulted(
    sftp_server: EmbeddedSftpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text(sftp_server.known_hosts_path.read_text())
    monkeypatch.setenv("HOME", str(home))
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyRefused):
        client_for(sftp_server, known_hosts_path=empty).connect()


def test_wrong_client_key_is_refused_without_retry(sftp_server: EmbeddedSftpServer, tmp_path: Path) -> None:
    other_key(tmp_path / "stranger")
    client = client_for(sftp_server, private_key_path=tmp_path / "stranger")
    with pytest.raises(AuthenticationRefused) as refused:
        client.list_dir("inbox")
    assert isinstance(refused.value, paramiko.AuthenticationException)
    assert f"{sftp_server.host}:{sftp_server.port}" in str(refused.value)
    assert client.connections_opened == 1


def test_other_user_name_is_refused(sftp_server: EmbeddedSftpServer) -> None:
    with pytest.raises(AuthenticationRefused):
        client_for(sftp_server, username="mallory").connect()


def test_the_right_key_works_against_the_same_server(sftp_server: EmbeddedSftpServer) -> None:
    # The refusals above are about the key or host key, not a broken server.
    with client_for(sftp_server) as client:
        assert client.list_dir("inbox") == []


# -- retries ----------------------------------------------------------------------------------------------------


def test_dropped_connection_is_retried_on_a_new_connection(
    sftp_server: EmbeddedSftpServer, sftp_client: SftpClient
) -> None:
    sftp_client.write_bytes("inbox/a.csv", b"a")
    sftp_server.drop_connections()
    assert [f.name for f in sftp_client.list_dir("inbox")] == ["a.csv"]
    assert sftp_client.connections_opened == 2


def test_without_retries_a_dropped_connection_fails(sftp_server: EmbeddedSftpServer) -> None:
    with client_for(sftp_server, retries=0) as client:
        sftp_server.drop_connections()
        with pytest.raises((OSError, EOFError, paramiko.SSHException)):
            client.list_dir("inbox")


def test_server_restart_is_ridden_out(sftp_server: EmbeddedSftpServer) -> None:
    port = sftp_server.port
    restarted = EmbeddedSftpServer(sftp_server.root, sftp_server.keys_dir, sftp_server.host, port)
    waits: list[float] = []

    def wait(seconds: float) -> None:
        # The server comes back during the second backoff: the client was refused once while it was down.
        waits.append(seconds)
        if len(waits) == 2:
            restarted.start()

    with client_for(sftp_server, retries=6, backoff_seconds=0.05, sleep=wait) as client:
        client.write_bytes("inbox/a.csv", b"a")
        sftp_server.stop()
        try:
            assert [f.name for f in client.list_dir("inbox")] == ["a.csv"]
        finally:
            restarted.stop()
        # The dropped session, a refused connection, then the one that worked; backoff doubling.
        assert client.connections_opened == 3
        assert waits == [0.05, 0.1]


def test_retries_are_bounded(sftp_server: EmbeddedSftpServer) -> None:
    client = client_for(sftp_server, retries=2, backoff_seconds=0.01)
    sftp_server.stop()
    with pytest.raises(OSError):
        client.list_dir("inbox")
    assert client.connections_opened == 3


# -- settings ------------------------------------------------------------------------------------------------


def test_from_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDALLION_SFTP_HOST", "sftp.partner.example")
    monkeypatch.setenv("MEDALLION_SFTP_PORT", "2022")
    monkeypatch.setenv("MEDALLION_SFTP_KEYS_DIR", str(tmp_path))
    client = SftpClient.from_settings(settings.sftp(), retries=1)
    assert (client.host, client.port, client.username, client.retries) == ("sftp.partner.example", 2022, "acme", 1)
    assert client.private_key_path == tmp_path / "client_ed25519"
    assert client.known_hosts_path == tmp_path / "known_hosts"


def test_entries_are_listed_with_their_kind_and_links_are_not_followed(
    sftp_server: EmbeddedSftpServer, sftp_client: SftpClient
) -> None:
    inbox = sftp_server.root / "inbox"
    (inbox / "f.csv").write_bytes(b"abc")
    (inbox / "sub").mkdir()
    (inbox / "link.csv").symlink_to("f.csv")
    kinds = {e.name: (e.kind, e.size) for e in sftp_client.list_entries("inbox")}
    assert kinds == {"f.csv": ("file", 3), "sub": ("directory", kinds["sub"][1]), "link.csv": ("symlink", 5)}
    assert sftp_client.stat("inbox/link.csv").kind == "symlink"  # type: ignore[union-attr]
    assert sftp_client.stat("inbox/f.csv") == RemoteEntry("f.csv", "file", 3, kinds_mtime(sftp_client))
    assert sftp_client.stat("inbox/missing.csv") is None


def kinds_mtime(client: SftpClient) -> int:
    return next(e.mtime for e in client.list_entries("inbox") if e.name == "f.csv")
