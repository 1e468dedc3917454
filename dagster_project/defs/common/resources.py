from __future__ import annotations

from pathlib import Path

import dagster as dg

from dagster_project import settings


class LakeResource(dg.ConfigurableResource):
    """The lake's folders. `root` overrides MEDALLION_LAKE_ROOT (tests point it at a temporary folder)."""

    root: str | None = None

    @property
    def path(self) -> Path:
        return Path(self.root) if self.root else settings.lake_root()

    def landing_root(self) -> Path:
        return self.path / "landing"

    def bronze_path(self, table: str) -> Path:
        return self.path / "bronze" / table

    def quarantine_path(self, table: str) -> Path:
        return self.path / "quarantine" / table

    def staging_dir(self, run_id: str) -> Path:
        return self.path / "_staging" / run_id


defs = dg.Definitions(resources={"lake": LakeResource()})
