from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg
import pyarrow as pa

from dagster_project import settings
from dagster_project.lib.clients.reverse_etl import SyncStats, sync_rows


class ReverseEtlTarget(dg.ConfigurableResource):
    """The operational table segments are pushed to: SQLite by default, PostgreSQL when `url` says so.

    A URL with a password should be given as `dg.EnvVar`. Unset fields come from MEDALLION_REVERSE_ETL_*.
    """

    url: str | None = None
    table: str | None = None
    batch_size: int | None = None

    def sync(self, rows: Iterable[Mapping[str, Any]] | pa.Table, key: str) -> SyncStats:
        """Make the table hold exactly `rows`, keyed by `key`: upsert changed rows, delete vanished keys."""
        return sync_rows(
            self.url or settings.reverse_etl_url(),
            self.table or settings.reverse_etl_table(),
            rows,
            key,
            batch_size=self.batch_size or settings.reverse_etl_batch_size(),
        )
