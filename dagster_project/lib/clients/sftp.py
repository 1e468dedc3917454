"""SFTP client wrapper: pinned host keys, key-only auth, atomic transfers, retries on transient failures.

- The server's host key must be in the pinned `known_hosts` file given here (never the system one, never
  learnt on first use); otherwise `HostKeyRefused`.
- Uploads go to `<name>.part` and are renamed when complete, so a reader never sees a partial file under the
  final name. Downloads stream to a temporary file next to the target and are renamed when complete.
- Network failures (refused/reset connections, timeouts, dropped sessions) are retried with exponential
  backoff on a fresh connection. Host-key refusals and authentication failures are never retried, and
  neither are SFTP errors on a healthy connection (a missing file stays missing).
"""

from __future__ import annotations

import io
import logging
import os
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, TypeVar

import paramiko

if TYPE_CHECKING:
    from dagster_project.settings import SftpSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
PART_SUFFIX = ".part"
CHUNK_BYTES = 32 * 1024

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    mtime: int


@dataclass(frozen=True)
class RemoteEntry:
    """Anything in a remote folder, as the server lists it (a symbolic link as a link, not followed)."""

    name: str
    kind: str  # "file" | "directory" | "symlink" | "other" (a device, a socket, a pipe)
    size: int
    mtime: int


def _kind(mode: int | None) -> str:
    if mode is None:
        return "other"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


class HostKeyRefused(Exception):
    """The server presented a host key that the pinned known_hosts file does not hold for it."""


class AuthenticationRefused(paramiko.AuthenticationException):
    """The server refused our user name and key."""


class _PinnedOnlyPolicy(paramiko.RejectPolicy):
    def __init__(self, host: str, port: int, known_hosts: Path) -> None:
        self._where = (host, port, known_hosts)

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _refused(*self._where, key)


def _refused(host: str, port: int, known_hosts: Path, key: paramiko.PKey) -> HostKeyRefused:
    # Only the fingerprint: the message ends up in logs and run metadata.
    return HostKeyRefused(
        f"host key of {host}:{port} ({key.get_name()} {key.fingerprint}) "
        f"is not in the pinned known_hosts file {known_hosts}; refusing to connect"
    )


_PERMANENT = (HostKeyRefused, paramiko.AuthenticationException, paramiko.BadHostKeyException)
_TRANSIENT = (EOFError, paramiko.SSHException, ConnectionError, TimeoutError, socket.timeout)


class SftpClient:
    """One SFTP session to one server; reconnects on its own. Use as a context manager.

    `retries` is how many times a failed operation is tried again after the first attempt, waiting
    `backoff_seconds`, then twice that, and so on, through `sleep` (tests pass their own to act while the
    client waits, instead of racing a timer).
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        private_key_path: Path,
        known_hosts_path: Path,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff_seconds: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.private_key_path = Path(private_key_path)
        self.known_hosts_path = Path(known_hosts_path)
        self.timeout = timeout
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self._sleep = sleep
        self.connections_opened = 0
        self._key: paramiko.PKey | None = None
        self._ssh: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    @classmethod
    def from_settings(
        cls, s: SftpSettings, *, timeout: float = 10.0, retries: int = 3, backoff_seconds: float = 0.5
    ) -> SftpClient:
        return cls(
            s.host,
            s.port,
            s.username,
            s.private_key_path,
            s.known_hosts_path,
            timeout=timeout,
            retries=retries,
            backoff_seconds=backoff_seconds,
        )

    # -- connection -------------------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the session now (otherwise the first operation does); retried like any operation."""
        self._call("connect", lambda sftp: None)

    def close(self) -> None:
        sftp, ssh = self._sftp, self._ssh
        self._sftp = self._ssh = None
        for closeable in (sftp, ssh):
            if closeable is not None:
                try:
                    closeable.close()
                except Exception:  # closing a dead connection may fail; it is gone either way
                    pass

    def _open(self) -> paramiko.SFTPClient:
        if self._sftp is not None:
            return self._sftp
        assert self._key is not None  # loaded by _call
        ssh = paramiko.SSHClient()
        ssh.set_missing_host_key_policy(_PinnedOnlyPolicy(self.host, self.port, self.known_hosts_path))
        if self.known_hosts_path.exists():
            ssh.load_host_keys(str(self.known_hosts_path))
        self._ssh = ssh
        self.connections_opened += 1
        try:
            ssh.connect(
                self.host,
                port=self.port,
                username=self.username,
                pkey=self._key,
                look_for_keys=False,
                allow_agent=False,
                timeout=self.timeout,
                banner_timeout=self.timeout,
                auth_timeout=self.timeout,
                channel_timeout=self.timeout,
            )
        except paramiko.BadHostKeyException as e:
            self.close()
            raise _refused(self.host, self.port, self.known_hosts_path, e.key) from None
        except paramiko.AuthenticationException as e:
            self.close()
            raise AuthenticationRefused(
                f"{self.host}:{self.port} refused user {self.username!r} with key {self.private_key_path} ({e})"
            ) from None
        except BaseException:
            self.close()
            raise
        sftp = ssh.open_sftp()
        sftp.get_channel().settimeout(self.timeout)  # type: ignore[union-attr]
        self._sftp = sftp
        return sftp

    def _alive(self) -> bool:
        # The server may close the SFTP channel before the transport notices the TCP connection is gone.
        transport = self._ssh.get_transport() if self._ssh is not None else None
        channel = self._sftp.get_channel() if self._sftp is not None else None
        return transport is not None and transport.is_active() and channel is not None and not channel.closed

    def _call(self, what: str, op: Callable[[paramiko.SFTPClient], T]) -> T:
        if self._key is None:
            # Outside the retry loop: a missing or unreadable key file is not a network problem.
            self._key = paramiko.PKey.from_path(self.private_key_path)
        attempt = 0
        while True:
            try:
                return op(self._open())
            except _PERMANENT:
                raise
            except Exception as e:
                # An SFTP status error (missing file, permission) on a live connection is an answer, not
                # a failure to get one: only network-level errors or a connection that died are retried.
                transient = isinstance(e, _TRANSIENT) or (isinstance(e, OSError) and not self._alive())
                if not transient or attempt >= self.retries:
                    raise
                delay = self.backoff_seconds * 2**attempt
                attempt += 1
                log.warning(
                    "SFTP %s on %s:%d failed (%s: %s); reconnecting in %.2fs (retry %d of %d)",
                    what,
                    self.host,
                    self.port,
                    type(e).__name__,
                    e,
                    delay,
                    attempt,
                    self.retries,
                )
                self.close()
                self._sleep(delay)

    # -- operations ---------------------------------------------------------------------------------------

    def list_dir(self, path: str) -> list[RemoteFile]:
        """Regular files directly in `path`, sorted by name (directories and links left out)."""

        def op(sftp: paramiko.SFTPClient) -> list[RemoteFile]:
            return sorted(
                (
                    RemoteFile(a.filename, int(a.st_size or 0), int(a.st_mtime or 0))
                    for a in sftp.listdir_attr(path)
                    if a.st_mode is not None and stat.S_ISREG(a.st_mode)
                ),
                key=lambda f: f.name,
            )

        return self._call(f"list {path}", op)

    def list_entries(self, path: str) -> list[RemoteEntry]:
        """Everything directly in `path`, sorted by name, with its kind; symbolic links are not followed."""

        def op(sftp: paramiko.SFTPClient) -> list[RemoteEntry]:
            return sorted(
                (
                    RemoteEntry(a.filename, _kind(a.st_mode), int(a.st_size or 0), int(a.st_mtime or 0))
                    for a in sftp.listdir_attr(path)
                ),
                key=lambda e: e.name,
            )

        return self._call(f"list {path}", op)

    def stat(self, path: str) -> RemoteEntry | None:
        """What is at `path` now (a link as a link), or None when nothing is."""

        def op(sftp: paramiko.SFTPClient) -> RemoteEntry | None:
            try:
                a = sftp.lstat(path)
            except FileNotFoundError:
                return None
            return RemoteEntry(path.rsplit("/", 1)[-1], _kind(a.st_mode), int(a.st_size or 0), int(a.st_mtime or 0))

        return self._call(f"stat {path}", op)

    def exists(self, path: str) -> bool:
        return self._call(f"stat {path}", lambda sftp: _exists(sftp, path))

    def download(self, remote_path: str, local_path: Path) -> int:
        """Copy a remote file to `local_path` (replaced atomically when complete); returns its size."""
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)

        def op(sftp: paramiko.SFTPClient) -> int:
            fd, tmp = tempfile.mkstemp(dir=local_path.parent, prefix=f".{local_path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as out, sftp.open(remote_path, "rb") as src:
                    src.prefetch()
                    size = 0
                    while chunk := src.read(CHUNK_BYTES):
                        out.write(chunk)
                        size += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, local_path)
                return size
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

        return self._call(f"download {remote_path}", op)

    def upload(self, local_path: Path, remote_path: str, *, progress: Progress | None = None) -> int:
        """Copy a local file to `remote_path` via `<remote_path>.part`; returns its size.

        `progress(bytes_sent, total)` is called as chunks go out.
        """
        with open(local_path, "rb") as f:
            return self._put(f, remote_path, progress)

    def write_bytes(self, remote_path: str, data: bytes) -> int:
        """Write `data` to `remote_path` with the same `.part`-then-rename guarantee as `upload`."""
        return self._put(io.BytesIO(data), remote_path, None)

    def move(self, src: str, dst: str) -> None:
        """Rename `src` to `dst`, replacing `dst` if it exists."""
        tried = False

        def op(sftp: paramiko.SFTPClient) -> None:
            nonlocal tried
            try:
                sftp.posix_rename(src, dst)
            except FileNotFoundError:
                # A retry after the connection dropped may find the first attempt did go through.
                if not tried or not _exists(sftp, dst):
                    raise
            finally:
                tried = True

        self._call(f"move {src} -> {dst}", op)

    def remove(self, path: str) -> None:
        """Delete the file at `path`; nothing there is not an error (a retry may find it gone)."""

        def op(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.remove(path)
            except FileNotFoundError:
                pass

        self._call(f"remove {path}", op)

    def _put(self, f: IO[bytes], remote_path: str, progress: Progress | None) -> int:
        part = remote_path + PART_SUFFIX

        total = f.seek(0, io.SEEK_END)

        def op(sftp: paramiko.SFTPClient) -> int:
            f.seek(0)
            attrs = sftp.putfo(f, part, file_size=total, callback=progress, confirm=True)
            sftp.posix_rename(part, remote_path)
            return int(attrs.st_size or 0)

        return self._call(f"upload {remote_path}", op)

    # -- context manager ------------------------------------------------------------------------------------

    def __enter__(self) -> SftpClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _exists(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        sftp.stat(path)
    except FileNotFoundError:
        return False
    return True
