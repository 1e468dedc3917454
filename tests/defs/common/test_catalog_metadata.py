"""The asset catalog as the UI shows it before anything runs: every lake table with its columns, its name and
its Delta table's URI; every asset with owners, a description and the code that defines it; every check
described."""

from __future__ import annotations

import functools
from pathlib import Path

import dagster as dg
import pytest

from dagster_project import settings
from dagster_project.definitions import defs as load_defs
from dagster_project.defs.common import catalog
from dagster_project.lib.bronze.catalog import PII_NOTE
from dagster_project.lib.sources.registry import SOURCES

LAKE_LAYERS = ("bronze", "quarantine", "silver", "gold")


@functools.cache
def _specs() -> dict[str, dg.AssetSpec]:
    return {s.key.to_user_string(): s for s in load_defs().resolve_all_asset_specs()}


@pytest.fixture
def specs(parsed_manifest: Path) -> dict[str, dg.AssetSpec]:
    return _specs()


def _references(spec: dg.AssetSpec) -> list[dg.LocalFileCodeReference]:
    value = spec.metadata.get(catalog.CODE_REFERENCES)
    assert isinstance(value, dg.CodeReferencesMetadataValue), spec.key
    return list(value.code_references)


def test_every_lake_table_has_its_columns_its_name_and_its_delta_uri(specs: dict[str, dg.AssetSpec]) -> None:
    lake = settings.lake()
    tables = {key: spec for key, spec in specs.items() if key.split("/")[0] in LAKE_LAYERS}
    assert len(tables) == 2 * len(SOURCES) + sum(key.startswith(("silver/", "gold/")) for key in specs)
    for key, spec in tables.items():
        layer, name = key.split("/")
        assert spec.metadata[catalog.TABLE_NAME] == f"{layer}.{name}", key
        assert spec.metadata[catalog.URI] == lake.table(layer, name), key
        assert spec.metadata[catalog.STORAGE_KIND] == "delta", key
        columns = spec.metadata[catalog.COLUMN_SCHEMA]
        assert isinstance(columns, dg.TableSchema) and columns.columns, key


def test_bronze_columns_come_from_the_declaration_with_pii_noted_and_rules_as_constraints(
    specs: dict[str, dg.AssetSpec],
) -> None:
    columns = {c.name: c for c in specs["bronze/customers"].metadata[catalog.COLUMN_SCHEMA].columns}
    assert list(columns)[: len(SOURCES["customers"].columns)] == list(SOURCES["customers"].column_names)
    assert {"business_date", "_source_file", "_run_id"} <= set(columns)
    email = columns["email"]
    assert (email.type, email.constraints.nullable, email.tags) == ("string", False, {"pii": ""})
    assert PII_NOTE in (email.description or "")
    assert columns["status"].constraints.other == ["one of active, inactive, closed"]
    assert columns["lifetime_value"].type == "decimal128(12, 2)" and columns["lifetime_value"].constraints.nullable
    quarantine = {c.name for c in specs["quarantine/customers"].metadata[catalog.COLUMN_SCHEMA].columns}
    assert {"_raw_record", "_reasons", "_source_line"} <= quarantine


def test_dbt_columns_come_from_the_model_yaml_with_their_tests_as_constraints(specs: dict[str, dg.AssetSpec]) -> None:
    columns = {c.name: c for c in specs["silver/stg_acme__customers"].metadata[catalog.COLUMN_SCHEMA].columns}
    key = columns["customer_id"]
    assert key.description == "CRM customer id; primary key."
    assert (key.constraints.nullable, key.constraints.unique) == (False, True)
    assert columns["status"].constraints.other == ["is one of active, inactive, closed"]
    assert columns["email_domain"].constraints.nullable is False
    # The reverse ETL target holds the gold segments as they are.
    segments = specs["gold/customer_segments"].metadata[catalog.COLUMN_SCHEMA]
    crm = specs["reverse_etl/crm_customer_scores"]
    assert crm.metadata[catalog.COLUMN_SCHEMA] == segments
    assert crm.metadata[catalog.TABLE_NAME] == settings.reverse_etl_table()


def test_every_asset_has_owners_a_description_and_code_references_to_files_that_exist(
    specs: dict[str, dg.AssetSpec],
) -> None:
    for key, spec in specs.items():
        assert spec.owners, f"{key} has no owners"
        assert spec.description, f"{key} has no description"
        for reference in _references(spec):
            path = Path(reference.file_path)
            assert path.is_file(), (key, reference)
            assert path.is_relative_to(settings.project_root()), (key, reference)
            if reference.line_number is not None:
                assert 1 <= reference.line_number <= len(path.read_text().splitlines()), (key, reference)


def test_code_references_point_at_the_model_sql_and_at_the_source_declaration(specs: dict[str, dg.AssetSpec]) -> None:
    [sql] = _references(specs["silver/stg_acme__customers"])
    assert sql.file_path.endswith("dbt_project/models/staging/acme/stg_acme__customers.sql")
    for name in SOURCES:
        references = _references(specs[f"bronze/{name}"])
        assert references[0].file_path.endswith("defs/common/bronze.py"), name
        [declaration] = [r for r in references if r.label == "Source declaration"]
        line = Path(declaration.file_path).read_text().splitlines()[declaration.line_number - 1]
        assert line.strip() == f'name="{name}",', name
        [reader] = [r for r in references if r.label == "Reader of the input"]
        assert "/defs/" in reader.file_path and "contextlib" not in reader.file_path, name


def test_silver_is_owned_by_its_source_and_gold_as_dbt_project_yml_declares(specs: dict[str, dg.AssetSpec]) -> None:
    assert specs["silver/stg_psp__charges"].owners == list(SOURCES["payment_events"].owners)
    assert specs["silver/stg_acme__consents"].owners == list(SOURCES["consents"].owners)
    assert specs["gold/payout_reconciliation"].owners == ["team:payments-data"]
    assert specs["gold/customer_segments"].owners == ["team:commerce-data"]


def test_every_check_is_described(parsed_manifest: Path) -> None:
    graph = load_defs().resolve_asset_graph()
    undescribed = [str(k) for k in graph.asset_check_keys if not graph.get_check_spec(k).description]
    assert not undescribed
    spec = graph.get_check_spec(
        next(k for k in graph.asset_check_keys if k.name == "unique_stg_acme__customers_customer_id")
    )
    assert spec.description == "dbt: customer_id is unique"


def test_the_uri_follows_the_lake_root_and_names_no_credentials(
    monkeypatch: pytest.MonkeyPatch, parsed_manifest: Path
) -> None:
    monkeypatch.setenv("MEDALLION_LAKE_ROOT", "s3://medallion-lake/prod")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret-0123456789")
    loaded = {s.key.to_user_string(): s for s in load_defs().resolve_all_asset_specs()}
    assert loaded["bronze/customers"].metadata[catalog.URI] == "s3://medallion-lake/prod/bronze/customers"
    assert loaded["gold/dim_customers"].metadata[catalog.URI] == "s3://medallion-lake/prod/gold/dim_customers"
    assert not any("not-a-real-secret" in str(s.metadata) for s in loaded.values())
