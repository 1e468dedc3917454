from __future__ import annotations

import dagster as dg

from dagster_project import settings
from dagster_project.lib.clients.airbyte import AirbyteClient, SyncResult


class AirbyteResource(dg.ConfigurableResource):
    """An Airbyte server's public API (v1), authenticated with an application's client credentials.

    Give `client_id` and `client_secret` as `dg.EnvVar`. Unset fields come from the MEDALLION_AIRBYTE_*
    settings (server URL such as https://api.airbyte.com/v1 or http://host:8000/api/public/v1).
    """

    client_id: str
    client_secret: str
    server_url: str | None = None
    connection_id: str | None = None
    poll_interval: float | None = None
    max_wait: float | None = None
    request_timeout: float | None = None

    def client(self) -> AirbyteClient:
        return AirbyteClient(
            self.server_url or settings.airbyte_server_url(),
            self.client_id,
            self.client_secret,
            timeout=self.request_timeout or settings.airbyte_request_timeout_seconds(),
            poll_interval=self.poll_interval or settings.airbyte_poll_interval_seconds(),
            max_wait=self.max_wait or settings.airbyte_max_wait_seconds(),
        )

    def sync(self, connection_id: str | None = None) -> SyncResult:
        """Sync the connection (joining a sync already running) and wait for it; raises AirbyteSyncError."""
        with self.client() as client:
            return client.sync(connection_id or self.connection_id or settings.airbyte_connection_id())
