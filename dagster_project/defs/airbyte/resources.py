from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from dagster_project import settings

if TYPE_CHECKING:  # the Airbyte SDK loads where a sync runs, not with the code location
    from dagster_project.lib.clients.airbyte import AirbyteClient, SyncResult


class AirbyteResource(dg.ConfigurableResource):
    """An Airbyte server's public API (v1), authenticated with an application's client credentials."""

    client_id: str = Field(description="Given as dg.EnvVar (MEDALLION_AIRBYTE_CLIENT_ID).")
    client_secret: str = Field(description="Given as dg.EnvVar (MEDALLION_AIRBYTE_CLIENT_SECRET).")
    server_url: str = Field(
        description="Public API root, e.g. https://api.airbyte.com/v1 or http://host:8000/api/public/v1; "
        "empty when no Airbyte server is configured."
    )
    connection_id: str = Field(description="The connection `sync()` runs unless it is given another.")
    poll_interval: float = Field(default=5.0, description="First wait between job status polls, in seconds.")
    max_wait: float = Field(default=3600.0, description="Longest one sync may take before it is cancelled.")
    request_timeout: float = Field(default=30.0, description="Timeout of one API request, in seconds.")

    def client(self) -> AirbyteClient:
        from dagster_project.lib.clients.airbyte import AirbyteClient

        if not self.server_url:
            raise ValueError(
                "No Airbyte server is configured: set MEDALLION_AIRBYTE_SERVER_URL "
                "(e.g. https://api.airbyte.com/v1) and MEDALLION_AIRBYTE_CONNECTION_ID."
            )
        return AirbyteClient(
            self.server_url,
            self.client_id,
            self.client_secret,
            timeout=self.request_timeout,
            poll_interval=self.poll_interval,
            max_wait=self.max_wait,
        )

    def sync(self, connection_id: str | None = None) -> SyncResult:
        """Sync the connection (joining a sync already running) and wait for it; raises AirbyteSyncError."""
        with self.client() as client:
            return client.sync(connection_id or self.connection_id)


@dg.definitions
def defs() -> dg.Definitions:
    airbyte = AirbyteResource(
        client_id=dg.EnvVar("MEDALLION_AIRBYTE_CLIENT_ID"),
        client_secret=dg.EnvVar("MEDALLION_AIRBYTE_CLIENT_SECRET"),
        server_url=settings.airbyte_server_url(),
        connection_id=settings.airbyte_connection_id(),
        poll_interval=settings.airbyte_poll_interval_seconds(),
        max_wait=settings.airbyte_max_wait_seconds(),
        request_timeout=settings.airbyte_request_timeout_seconds(),
    )
    return dg.Definitions(resources={"airbyte": airbyte})
