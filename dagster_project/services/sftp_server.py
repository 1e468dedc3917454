"""Embedded SSH/SFTP server for local use and tests: the stand-in for the partner's server.

A real SSH server (asyncssh) on loopback: public-key authentication only, one user, SFTP only (no shell,
no exec, no forwarding), every session jailed in one root directory that holds `inbox/`, `archive/` and
`quarantine/`. Keys are generated once into a keys directory, and clients pin the host key through the
`known_hosts` file written next to them, exactly as they would for a partner's server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Coroutine, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncssh

log = logging.getLogger(__name__)

HOST_KEY = "ssh_host_ed25519_key"
CLIENT_KEY = "client_ed25519"
AUTHORIZED_KEYS = "authorized_keys"
KNOWN_HOSTS = "known_hosts"
DEFAULT_DIRS = ("inbox", "archive", "quarantine")


def _write_private(path: Path, data: bytes) -> None:
    # Created with 0600 from the start: the key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _ensure_key_pair(private_path: Path, comment: str) -> asyncssh.SSHKey:
    if private_path.exists():
        key = asyncssh.read_private_key(str(private_path))
    else:
        key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
        _write_private(private_path, key.export_private_key())
    public_path = private_path.with_name(private_path.name + ".pub")
    if not public_path.exists():
        public_path.write_bytes(key.export_public_key())
    return key


def generate_keys(keys_dir: Path) -> None:
    """Create the host key, the client key pair and `authorized_keys`; keeps whatever already exists."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    _ensure_key_pair(keys_dir / HOST_KEY, "medallion-embedded-sftp-host")
    client = _ensure_key_pair(keys_dir / CLIENT_KEY, "medallion-embedded-sftp-client")
    client_line = client.export_public_key().decode().strip()
    authorized = keys_dir / AUTHORIZED_KEYS
    existing = authorized.read_text().splitlines() if authorized.exists() else []
    if client_line not in (line.strip() for line in existing):
        authorized.write_text("".join(f"{line}\n" for line in [*existing, client_line]))


def write_known_hosts(keys_dir: Path, host: str, port: int) -> Path:
    """Write `known_hosts` pinning this server's host key for host:port (OpenSSH format)."""
    public = asyncssh.read_private_key(str(keys_dir / HOST_KEY)).export_public_key().decode().split()
    pattern = host if port == 22 else f"[{host}]:{port}"
    path = keys_dir / KNOWN_HOSTS
    path.write_text(f"{pattern} {public[0]} {public[1]}\n")
    return path


def prepare_root(root: Path, dirs: Iterable[str] = DEFAULT_DIRS) -> None:
    for name in dirs:
        (root / name).mkdir(parents=True, exist_ok=True)


class _Server(asyncssh.SSHServer):
    """Per-connection callbacks: trust the authorized keys for the one configured user only."""

    def __init__(self, username: str, authorized_keys: Path, live: set[asyncssh.SSHServerConnection]):
        self._username = username
        self._authorized_keys = authorized_keys
        self._live = live
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._live.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._live.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        # Any other user name gets no trusted keys, so every authentication attempt fails.
        if username == self._username and self._conn is not None:
            self._conn.set_authorized_keys(str(self._authorized_keys))
        return True

    def public_key_auth_supported(self) -> bool:
        return True


async def _listen(
    root: Path, keys_dir: Path, host: str, port: int, username: str, live: set[asyncssh.SSHServerConnection]
) -> asyncssh.SSHAcceptor:
    generate_keys(keys_dir)
    prepare_root(root)
    chroot = str(root)
    return await asyncssh.listen(
        host,
        port,
        server_factory=lambda: _Server(username, keys_dir / AUTHORIZED_KEYS, live),
        server_host_keys=[str(keys_dir / HOST_KEY)],
        sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=chroot),
        allow_scp=False,
        password_auth=False,
        kbdint_auth=False,
        agent_forwarding=False,
        allow_pty=False,
        x11_forwarding=False,
    )


class EmbeddedSftpServer:
    """The server on its own event loop in a background thread: `with EmbeddedSftpServer(...) as s:`.

    `port=0` takes a free port; `.port` is the real one once started, and `known_hosts` in `keys_dir`
    pins the host key for it. `stop()` closes the listener and every open connection.
    """

    def __init__(
        self, root: Path, keys_dir: Path, host: str = "127.0.0.1", port: int = 0, username: str = "acme"
    ) -> None:
        self.root = Path(root)
        self.keys_dir = Path(keys_dir)
        self.host = host
        self.port = port
        self.username = username
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._live: set[asyncssh.SSHServerConnection] = set()

    @property
    def known_hosts_path(self) -> Path:
        return self.keys_dir / KNOWN_HOSTS

    @property
    def client_key_path(self) -> Path:
        return self.keys_dir / CLIENT_KEY

    def start(self) -> EmbeddedSftpServer:
        if self._loop is not None:
            raise RuntimeError("the SFTP server is already running")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="embedded-sftp", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            future = asyncio.run_coroutine_threadsafe(
                _listen(self.root, self.keys_dir, self.host, self.port, self.username, self._live), loop
            )
            self._acceptor = future.result(timeout=30)
        except BaseException:
            self._shutdown_loop()
            raise
        self.port = self._acceptor.get_port()
        write_known_hosts(self.keys_dir, self.host, self.port)
        return self

    def drop_connections(self) -> None:
        """Close every open client connection but keep listening (what a flaky network does)."""
        self._run(self._close_connections())

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            self._run(self._close_all())
        finally:
            self._shutdown_loop()

    async def _close_connections(self) -> None:
        conns = list(self._live)
        for conn in conns:
            conn.close()
        await asyncio.gather(*(conn.wait_closed() for conn in conns), return_exceptions=True)

    async def _close_all(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        await self._close_connections()

    def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the SFTP server is not running")
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        loop.close()

    def __enter__(self) -> EmbeddedSftpServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_forever(root: Path, keys_dir: Path, host: str, port: int, username: str) -> None:
    """Run the server in the foreground until SIGINT or SIGTERM."""

    async def main() -> None:
        live: set[asyncssh.SSHServerConnection] = set()
        acceptor = await _listen(root, keys_dir, host, port, username, live)
        actual_port = acceptor.get_port()
        known_hosts = write_known_hosts(keys_dir, host, actual_port)
        log.info(
            "SFTP server listening on %s:%d for user %r, root %s, known_hosts %s",
            host,
            actual_port,
            username,
            root,
            known_hosts,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Explicit handlers, so the server also stops when started with these signals ignored.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            acceptor.close()
            for conn in list(live):
                conn.close()
            await acceptor.wait_closed()
            log.info("SFTP server on %s:%d stopped", host, actual_port)

    asyncio.run(main())
