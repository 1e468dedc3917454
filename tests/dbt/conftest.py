from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import duckdb
import pytest

from dagster_project import settings
from dagster_project.lib.dbt_plugins.run_file import RUN_FILE, write_run
from tests.dbt.support import PII_KEY, Dbt, dbt_command


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fixed paths for the lake and the dbt target of every test in the session (their content is wiped): the
    target keeps dbt's partial parse from one command to the next."""
    return tmp_path_factory.mktemp("dbt")


@pytest.fixture
def lake(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty lake, wired to dbt through the same variables settings.py reads."""
    shutil.rmtree(workdir / "lake", ignore_errors=True)
    monkeypatch.setenv("MEDALLION_LAKE_ROOT", str(workdir / "lake"))
    monkeypatch.setenv("MEDALLION_PII_HMAC_KEY", PII_KEY)
    return Path(settings.lake_root())


@pytest.fixture
def dbt(lake: Path, workdir: Path) -> Dbt:
    """Run the dbt CLI on the project as a subprocess, as Dagster does."""

    def run(
        *args: str, window: Sequence[str] | None = None, by_hand: bool = False, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """As Dagster runs it, with the lake and `window` (first and last business date) in the command's run
        file; `by_hand`, as a user does: no run file, the lake from MEDALLION_LAKE_ROOT, a window as `--vars`."""
        run_file = workdir / "target" / RUN_FILE
        if by_hand:
            run_file.unlink(missing_ok=True)
        else:
            write_run(run_file.parent, str(lake), window)
        cmd = dbt_command(workdir, *args)
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=settings.dbt_project_dir())
        if check and result.returncode != 0:
            raise AssertionError(f"dbt {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    return run


@pytest.fixture
def warehouse(lake: Path) -> Iterator[Callable[[], duckdb.DuckDBPyConnection]]:
    """A DuckDB connection that sees every Delta table of the lake as `<layer>.<table>`, as dbt does."""
    connections: list[duckdb.DuckDBPyConnection] = []

    def connect() -> duckdb.DuckDBPyConnection:
        lake = settings.lake()
        con = lake.connect()
        con.execute("set TimeZone = 'UTC'")
        lake.attach(con)
        connections.append(con)
        return con

    yield connect
    for con in connections:
        con.close()
