from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dagster_project import settings
from dagster_project.defs.transform.resources import dbt_env
from tests.dbt.support import PII_KEY, customer, write_bronze_partition


@pytest.fixture(scope="session")
def parsed_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Parse the dbt project as the Makefile does, so the assets module can load its manifest."""
    scratch = tmp_path_factory.mktemp("parse")
    project_dir = settings.dbt_project_dir()
    env = {
        "MEDALLION_LAKE_ROOT": str(scratch / "lake"),
        "MEDALLION_WAREHOUSE_PATH": str(scratch / "warehouse.duckdb"),
    }
    subprocess.run(
        [str(Path(sys.executable).with_name("dbt")), "parse", "--quiet"]
        + ["--project-dir", str(project_dir), "--profiles-dir", str(project_dir)],
        check=True,
        cwd=project_dir,
        env={**os.environ, **env},
    )
    return project_dir / "target" / "manifest.json"


@pytest.fixture
def lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Bronze customers for two business dates in a tmp lake; the warehouse is a tmp DuckDB file."""
    monkeypatch.setenv("MEDALLION_LAKE_ROOT", str(tmp_path / "lake"))
    monkeypatch.setenv("MEDALLION_WAREHOUSE_PATH", str(tmp_path / "warehouse" / "warehouse.duckdb"))
    monkeypatch.setenv("MEDALLION_PII_HMAC_KEY", PII_KEY)
    assert dbt_env()["MEDALLION_LAKE_ROOT"] == str(tmp_path / "lake")
    lake_root = settings.lake_root()
    write_bronze_partition(
        lake_root,
        "2025-01-01",
        [
            customer(1, "2025-01-01", "2025-01-01T08:00:00", email="ada@example.com", row=1),
            customer(2, "2025-01-01", "2025-01-01T08:00:00", email="bob@example.org", row=2),
        ],
    )
    write_bronze_partition(
        lake_root,
        "2025-01-02",
        [customer(1, "2025-01-02", "2025-01-02T08:00:00", email="ada@example.com", status="closed", row=1)],
    )
    return lake_root
