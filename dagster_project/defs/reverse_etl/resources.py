from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from dagster_project import settings
from dagster_project.defs.common.resources import by_reference_if_configured

if TYPE_CHECKING:  # SQLAlchemy loads where a sync runs, not with the code location
    import pyarrow as pa

    from dagster_project.lib.clients.reverse_etl import SyncStats


class ReverseEtlTarget(dg.ConfigurableResource):
    """The operational table segments are pushed to: SQLite embedded, PostgreSQL in production."""

    url: str = Field(
        description="SQLAlchemy URL of the target database. One with a password is given as dg.EnvVar "
        "(MEDALLION_REVERSE_ETL_URL), so it is never shown."
    )
    table: str = Field(description="Target table as schema.table; the schema is ignored on SQLite.")
    batch_size: int = Field(default=1000, description="Rows per transaction.")

    def sync(self, rows: Iterable[Mapping[str, Any]] | pa.Table, key: str) -> SyncStats:
        """Make the table hold exactly `rows`, keyed by `key`: upsert changed rows, delete vanished keys."""
        from dagster_project.lib.clients.reverse_etl import sync_rows

        return sync_rows(self.url, self.table, rows, key, batch_size=self.batch_size)


@dg.definitions
def defs() -> dg.Definitions:
    target = ReverseEtlTarget(
        url=by_reference_if_configured(settings.REVERSE_ETL_URL, settings.reverse_etl_default_url()),
        table=settings.reverse_etl_table(),
        batch_size=settings.reverse_etl_batch_size(),
    )
    return dg.Definitions(resources={"crm": target})
