"""The dbt sources are the registry's sources: every declared source is read by dbt, and nothing else is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dagster_project.lib.dbt_plugins.bronze import bronze_schemas
from dagster_project.lib.sources.registry import SOURCES


@pytest.fixture
def dbt_sources(parsed_manifest: Path) -> dict[str, dict]:
    manifest = json.loads(parsed_manifest.read_text())
    return {s["name"]: s for s in manifest["sources"].values()}


def test_every_registered_source_is_a_dbt_source_under_its_declared_dbt_source(dbt_sources: dict[str, dict]) -> None:
    assert set(dbt_sources) == set(SOURCES)
    for name, spec in SOURCES.items():
        meta = dbt_sources[name]["config"]["meta"]
        assert dbt_sources[name]["source_name"] == spec.dbt_source, name
        assert meta["dagster"]["asset_key"] == ["bronze", name]
        assert meta["delta_table_path"].endswith(f"/bronze/{name}")


def test_the_bronze_plugin_knows_the_schema_of_every_source_it_reads(dbt_sources: dict[str, dict]) -> None:
    read_by_plugin = {name: s["config"]["meta"] for name, s in dbt_sources.items()}
    read_by_plugin = {name: meta for name, meta in read_by_plugin.items() if meta.get("plugin") == "bronze"}
    assert read_by_plugin, "no dbt source is read through the bronze plugin"
    for name, meta in read_by_plugin.items():
        assert meta["bronze_table"] == name, name  # the schema it falls back to is the table's own
        assert meta["bronze_table"] in bronze_schemas(), name
