from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dagster_project import settings
from dagster_project.defs.transform.resources import MedallionDbtCliResource
from tests.dbt.support import PII_KEY, customer, write_bronze_partition


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One lake path for the session, wiped per test."""
    return tmp_path_factory.mktemp("transform")


@pytest.fixture
def lake(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Bronze customers for two business dates in an empty lake.

    Only the secret is in the environment: the lake reaches dbt through the resource's config.
    """
    shutil.rmtree(workdir / "lake", ignore_errors=True)
    monkeypatch.delenv("MEDALLION_LAKE_ROOT", raising=False)
    monkeypatch.setenv("MEDALLION_PII_HMAC_KEY", PII_KEY)
    lake_root = workdir / "lake"
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


@pytest.fixture
def dbt_resource(lake: Path) -> MedallionDbtCliResource:
    project_dir = str(settings.dbt_project_dir())
    return MedallionDbtCliResource(project_dir=project_dir, profiles_dir=project_dir, lake_root=str(lake))
