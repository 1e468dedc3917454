"""Resources every domain shares: the lake. Values are bound from `settings` when the definitions load."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from dagster_project import settings
from dagster_project.lib.lake import Lake


class LakeResource(dg.ConfigurableResource):
    """The lake (a local path or an s3://, gs://, az:// URI) that holds landing, bronze, quarantine, silver, gold.

    Only the root is configuration shown in the UI; the object store's credentials are read from the standard
    variables (or workload identity) in the process that uses them, never stored in a run's config."""

    root: str = Field(description="Lake root shared with dbt (MEDALLION_LAKE_ROOT): a path or a URI.")

    @property
    def lake(self) -> Lake:
        return Lake.parse(self.root, settings.lake_storage_options())

    def table(self, layer: str, name: str) -> str:
        """URI of a layer's Delta table (`bronze`, `quarantine`, `silver`, `gold`)."""
        return self.lake.table(layer, name)

    def staging_dir(self, run_id: str) -> Path:
        """A local scratch folder of one run (downloads before they land); never inside the lake."""
        return settings.data_dir() / "staging" / run_id


class PiiKeyResource(dg.ConfigurableResource):
    """The PII HMAC key, bound by reference (`dg.EnvVar`, never shown): the erasure forget list is keyed by it,
    and bronze loads need it once the list names anyone."""

    key: str = Field(default="", description="The PII HMAC key (MEDALLION_PII_HMAC_KEY), given by reference.")

    def key_bytes(self) -> bytes:
        from dagster_project.lib.masking import validate_key

        if not self.key:
            raise RuntimeError(f"{settings.PII_HMAC_KEY} is not set: the erasure forget list is keyed by it")
        try:
            return validate_key(self.key.encode("utf-8"))
        except ValueError as exc:
            raise RuntimeError(f"{settings.PII_HMAC_KEY}: {exc}") from None


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
    return dg.Definitions(
        resources={
            "lake": LakeResource(root=settings.lake_root()),
            "pii_key": PiiKeyResource(key=by_reference_if_configured(settings.PII_HMAC_KEY, "")),
        }
    )
