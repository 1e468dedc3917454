from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from dagster_project import settings
from dagster_project.lib.intake.sftp_inbox import RemoteLayout

if TYPE_CHECKING:  # paramiko loads where a connection is opened, not with the code location
    from dagster_project.lib.clients.sftp import SftpClient


class SftpResource(dg.ConfigurableResource):
    """The partner's SFTP server: key auth only, and its host key must be in the pinned known_hosts file."""

    host: str
    port: int
    username: str
    private_key_path: str = Field(description="Client private key file (the key itself is never config).")
    known_hosts_path: str = Field(description="Pinned known_hosts file; unknown host keys are refused.")
    inbox_dir: str = "inbox"
    archive_dir: str = "archive"
    quarantine_dir: str = "quarantine"
    stable_seconds: float = Field(
        default=30.0,
        description="How long a file's size and mtime must hold still (from the first look that saw them) "
        "before it is taken.",
    )
    intake_attempts: int = Field(
        default=5, description="Runs asked for one file before it is quarantined with the reason."
    )
    intake_backoff_seconds: float = Field(
        default=30.0, description="Wait after a file's first failed run before the next; doubles with each."
    )
    retries: int = Field(default=3, description="Retries of one SFTP operation after a network failure.")
    backoff_seconds: float = 0.5

    @classmethod
    def from_settings(cls, s: settings.SftpSettings) -> SftpResource:
        return cls(
            host=s.host,
            port=s.port,
            username=s.username,
            private_key_path=str(s.private_key_path),
            known_hosts_path=str(s.known_hosts_path),
            inbox_dir=s.inbox_dir,
            archive_dir=s.archive_dir,
            quarantine_dir=s.quarantine_dir,
            stable_seconds=s.stable_seconds,
            intake_attempts=s.intake_attempts,
            intake_backoff_seconds=s.intake_backoff_seconds,
        )

    def layout(self) -> RemoteLayout:
        return RemoteLayout(inbox=self.inbox_dir, archive=self.archive_dir, quarantine=self.quarantine_dir)

    def uri(self, path: str) -> str:
        return f"sftp://{self.username}@{self.host}:{self.port}/{path}"

    @contextmanager
    def client(self) -> Iterator[SftpClient]:
        from dagster_project.lib.clients.sftp import SftpClient

        with SftpClient(
            self.host,
            self.port,
            self.username,
            Path(self.private_key_path),
            Path(self.known_hosts_path),
            retries=self.retries,
            backoff_seconds=self.backoff_seconds,
        ) as client:
            yield client


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(resources={"sftp": SftpResource.from_settings(settings.sftp())})
