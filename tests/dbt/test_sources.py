"""The dbt sources are the registry's sources: every declared source is read by dbt, and nothing else is."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from dagster_project.lib.dbt_plugins.lake import _bronze_schemas
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.registry import SOURCES


@pytest.fixture
def dbt_sources(parsed_manifest: Path) -> dict[str, dict]:
    manifest = json.loads(parsed_manifest.read_text())
    return {s["name"]: s for s in manifest["sources"].values()}


def test_every_registered_source_is_a_dbt_source_under_its_declared_dbt_source(dbt_sources: dict[str, dict]) -> None:
    assert set(dbt_sources) == set(SOURCES)
    for name, spec in SOURCES.items():
        source = dbt_sources[name]
        assert source["source_name"] == spec.dbt_source, name
        assert (source["schema"], source["identifier"]) == ("bronze", name)  # the view Lake.attach creates
        assert source["config"]["meta"]["dagster"]["asset_key"] == ["bronze", name]


def test_a_source_that_never_delivered_reads_as_an_empty_table_of_its_declared_columns(tmp_path: Path) -> None:
    con = duckdb.connect()
    Lake.parse(str(tmp_path / "lake")).attach(con, empty_bronze=_bronze_schemas())
    for name, spec in SOURCES.items():
        columns = [c for (c,) in con.execute(f"select column_name from (describe bronze.{name})").fetchall()]
        assert set(spec.column_names) <= set(columns), name
        assert con.execute(f"select count(*) from bronze.{name}").fetchone() == (0,)
