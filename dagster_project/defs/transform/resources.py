"""The dbt project and CLI resource, with the environment dbt needs derived from `settings`."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dagster_dbt import DbtCliInvocation, DbtCliResource, DbtProject

from dagster_project import settings


def dbt_env() -> dict[str, str]:
    """Values for the variables dbt reads with `env_var()`, resolved by settings (defaults included).

    The PII key is not here: it is a secret, reaches the process environment from the deployment and
    is read by the dbt plugin from there.
    """
    return {
        "MEDALLION_LAKE_ROOT": str(settings.lake_root()),
        "MEDALLION_WAREHOUSE_PATH": str(settings.warehouse_path()),
    }


@contextmanager
def exported(env: Mapping[str, str]) -> Iterator[None]:
    """Set `env` in `os.environ` for the duration of the block, then restore the previous values.

    dagster-dbt builds the dbt subprocess environment from `os.environ` and also renders the profile
    in-process, so the variables have to be in this process's environment while a command starts.
    """
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class MedallionDbtCliResource(DbtCliResource):
    """`DbtCliResource` that starts every dbt command with the lake and warehouse from settings."""

    def cli(self, args: Sequence[str], **kwargs: Any) -> DbtCliInvocation:
        settings.warehouse_path().parent.mkdir(parents=True, exist_ok=True)
        with exported(dbt_env()):
            return super().cli(args, **kwargs)


class DbtManifestMissingError(RuntimeError):
    pass


def load_dbt_project(project_dir: Path | None = None) -> DbtProject:
    """The dbt project with a parsed manifest; fails with the fix spelt out if there is none."""
    project_dir = project_dir or settings.dbt_project_dir()
    project = DbtProject(project_dir=project_dir, profiles_dir=project_dir)
    with exported(dbt_env()):
        project.prepare_if_dev()  # re-parses under `dagster dev` only
    if not project.manifest_path.exists():
        raise DbtManifestMissingError(
            f"dbt manifest not found at {project.manifest_path}. Parse the project first: "
            f"`uv run dbt parse --project-dir {project_dir} --profiles-dir {project_dir}` "
            "(with MEDALLION_WAREHOUSE_PATH and MEDALLION_LAKE_ROOT set), or run `make` once, "
            "which does it before anything else."
        )
    return project
