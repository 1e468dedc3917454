from __future__ import annotations

import dagster as dg
from pydantic import Field

from dagster_project import settings


class RetentionResource(dg.ConfigurableResource):
    """How long each layer is kept, from MEDALLION_RETENTION_* (null: for ever); the UI shows what a run used.

    Set in the environment, not per run: a run only chooses whether to remove anything (`dry_run`)."""

    landing_days: int | None = Field(description="Landed files by business date; null keeps landing for ever.")
    quarantine_days: int | None = Field(description="Quarantine rows by business date.")
    # At least an hour: a vacuum also removes files no commit references yet, as a write in progress has.
    delta_versions_hours: int | None = Field(
        ge=1, description="Old versions of every Delta table: replaced files and log entries."
    )
    run_history_days: int | None = Field(description="Finished Dagster runs and their event logs.")
    sftp_archive_days: int | None = Field(description="Files in the SFTP server's archive/.")
    sftp_quarantine_days: int | None = Field(description="Files in the SFTP server's quarantine/.")
    uploads_hours: int | None = Field(description="Leftovers of interrupted landings (landing/_uploads).")

    @classmethod
    def from_settings(cls, s: settings.RetentionSettings) -> RetentionResource:
        return cls(
            landing_days=s.landing_days,
            quarantine_days=s.quarantine_days,
            delta_versions_hours=s.delta_versions_hours,
            run_history_days=s.run_history_days,
            sftp_archive_days=s.sftp_archive_days,
            sftp_quarantine_days=s.sftp_quarantine_days,
            uploads_hours=s.uploads_hours,
        )


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(resources={"retention": RetentionResource.from_settings(settings.retention())})
