"""The dbt project and the dbt CLI resource.

The lake root a run uses is resource config, bound when the definitions load and shown in the UI. Each dbt
command receives it, with the business dates of a daily run, in the run file of its own target folder, read
by the lake plugin (lib/dbt_plugins/lake.py): not as `--vars`, which would make dbt parse the whole project
again on every command, nor through the subprocess environment, which dagster-dbt 0.29 builds from this
process's `os.environ` with no hook to add to it. So nothing here changes `os.environ`. Run by hand, dbt reads
the variable MEDALLION_LAKE_ROOT instead (profiles.yml).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from dagster_dbt import DbtCliInvocation, DbtCliResource, DbtProject
from packaging import version

from dagster_project import settings
from dagster_project.lib.dbt_plugins.run_file import write_run


def dbt_executable() -> str:
    """dbt from PATH, else the one installed beside this interpreter: `.venv/bin/medallion` run without the
    virtual environment on PATH still finds its own dbt."""
    return shutil.which("dbt") or str(Path(sys.executable).with_name("dbt"))


class MedallionDbtCliResource(DbtCliResource):
    """`DbtCliResource` that runs every dbt command against the configured lake.

    The PII key and the object store's credentials are not config: they are secrets, reach the process
    environment from the deployment and are read by the dbt plugins from there.
    """

    lake_root: str

    def __init__(self, **data: Any) -> None:
        super().__init__(**{"dbt_executable": dbt_executable(), **data})

    def cli(
        self,
        args: Sequence[str],
        *,
        window: Sequence[str] | None = None,
        target_path: Path | None = None,
        context: Any = None,
        **kwargs: Any,
    ) -> DbtCliInvocation:
        """dagster-dbt's `cli`, the command run on this resource's lake and, given a `window` (first and last
        business date, inclusive), on those dates only."""
        target_path = target_path or self._get_unique_target_path(context=context)
        write_run(Path(self.project_dir, target_path), self.lake_root, window)  # relative to the project, as dbt
        return super().cli(args, target_path=target_path, context=context, **kwargs)

    # Two costs dagster-dbt 0.29 pays in the run's process for every dbt command, which the steps here do not
    # need: `dbt --version` in a subprocess (about 1.5 s of CPU, once per resource instance: once per step), and a
    # dbt adapter built in-process (the profile rendered and every macro of the project loaded, about 0.5 s) for
    # `fetch_column_metadata` and `fetch_row_counts`, which these steps do not call: they read their tables'
    # facts from the lake (`with_table_facts`).
    @property
    def _cli_version(self) -> version.Version:
        return dbt_cli_version(self.dbt_executable)

    def _initialize_dbt_core_adapter(self, args: Sequence[str]) -> None:
        return None


@functools.cache
def dbt_cli_version(executable: str) -> version.Version:
    """The version of the dbt CLI at `executable`: the installed dbt-core's when it is the dbt beside this
    interpreter (the same package), else what `dbt --version` prints, asked once per process."""
    if Path(executable).resolve() == Path(sys.executable).with_name("dbt").resolve():
        return version.parse(metadata.version("dbt-core"))
    printed = subprocess.run([executable, "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"(\d+\.\d+\.\d+)", printed)
    if found is None:
        raise ValueError(f"{executable} --version: no version in what it printed: {printed.strip()[:200]}")
    return version.parse(found.group(1))


class DbtManifestMissingError(RuntimeError):
    pass


def load_dbt_project(project_dir: Path | None = None) -> DbtProject:
    """The dbt project with a parsed manifest; fails with the fix spelt out if there is none."""
    project_dir = project_dir or settings.dbt_project_dir()
    project = DbtProject(project_dir=project_dir, profiles_dir=project_dir)
    # Re-parses under `dagster dev` only. Parsing needs no lake: a command reads it from its run file.
    if settings.running_under_dagster_dev():
        parse_atomically(project)
    if not project.manifest_path.exists():
        raise DbtManifestMissingError(
            f"dbt manifest not found at {project.manifest_path}. Parse the project first: "
            f"`uv run dbt parse --project-dir {project_dir} --profiles-dir {project_dir}`, "
            "or run `make` once, which does it before anything else."
        )
    return project


def parse_atomically(project: DbtProject) -> None:
    """`dbt parse` into a scratch target folder, then swap the manifest in with one rename.

    dagster-dbt's own `prepare_if_dev` parses into the project's `target/` in place, so a code server (or a
    test) loading the manifest meanwhile could read half of it. The previous parse state is copied in first,
    so dbt still parses partially.
    """
    target = Path(project.project_dir) / project.target_path  # dbt resolves a relative target in the project
    target.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".parse-", dir=target))
    try:
        state = target / "partial_parse.msgpack"
        if state.exists():
            shutil.copy2(state, scratch / state.name)
        DbtCliResource(project_dir=project, dbt_executable=dbt_executable()).cli(
            ["parse", "--quiet"], target_path=scratch
        ).wait()
        for name in ("partial_parse.msgpack", "manifest.json"):  # the manifest last: it is what readers read
            if (scratch / name).exists():
                os.replace(scratch / name, target / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
