from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from dagster_project import settings
from dagster_project.lib.clients.sftp import SftpClient
from dagster_project.lib.intake.sftp_inbox import RemoteLayout


class SftpResource(dg.ConfigurableResource):
    """The partner's SFTP server. Unset fields come from the MEDALLION_SFTP_* settings; key auth only,
    and the server's host key must be in the pinned known_hosts file."""

    host: str | None = None
    port: int | None = None
    username: str | None = None
    private_key_path: str | None = None
    known_hosts_path: str | None = None
    retries: int = 3
    backoff_seconds: float = 0.5

    def resolved(self) -> settings.SftpSettings:
        overrides = {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "private_key_path": Path(self.private_key_path) if self.private_key_path else None,
            "known_hosts_path": Path(self.known_hosts_path) if self.known_hosts_path else None,
        }
        return dataclasses.replace(settings.sftp(), **{k: v for k, v in overrides.items() if v is not None})

    def layout(self) -> RemoteLayout:
        s = self.resolved()
        return RemoteLayout(inbox=s.inbox_dir, archive=s.archive_dir, quarantine=s.quarantine_dir)

    def uri(self, path: str) -> str:
        s = self.resolved()
        return f"sftp://{s.username}@{s.host}:{s.port}/{path}"

    @contextmanager
    def client(self) -> Iterator[SftpClient]:
        with SftpClient.from_settings(
            self.resolved(), retries=self.retries, backoff_seconds=self.backoff_seconds
        ) as client:
            yield client


defs = dg.Definitions(resources={"sftp": SftpResource()})
