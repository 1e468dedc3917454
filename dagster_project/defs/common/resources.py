"""Resources every domain shares: the lake. Values are bound from `settings` when the definitions load."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from dagster_project import settings


class LakeResource(dg.ConfigurableResource):
    """The lake's folders: landing, bronze, quarantine and run staging under one root."""

    root: str = Field(description="Lake root shared with dbt (MEDALLION_LAKE_ROOT).")

    @property
    def path(self) -> Path:
        return Path(self.root)

    def landing_root(self) -> Path:
        return self.path / "landing"

    def bronze_path(self, table: str) -> Path:
        return self.path / "bronze" / table

    def quarantine_path(self, table: str) -> Path:
        return self.path / "quarantine" / table

    def staging_dir(self, run_id: str) -> Path:
        return self.path / "_staging" / run_id


def by_reference_if_configured(variable: str, default: str) -> str:
    """`dg.EnvVar(variable)` when the variable is set, else `default`.

    For a value that may carry a password, such as a PostgreSQL URL: a configured one is bound by
    reference, so the UI and the run's config show the variable's name and never the value, and each run
    reads it from its own environment. The embedded default (a local SQLite file) holds no secret and is
    bound as it is, so the UI shows it.
    """
    return dg.EnvVar(variable) if settings.is_configured(variable) else default


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(resources={"lake": LakeResource(root=str(settings.lake_root()))})
