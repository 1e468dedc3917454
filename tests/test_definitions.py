"""Loading the code location, and a snapshot of what it defines, so a rename shows up in review."""

import functools
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from dagster_project.definitions import FOLLOW_UPSTREAM
from dagster_project.definitions import defs as load_defs
from dagster_project.lib.sources.registry import SOURCES

EXPECTED_ASSETS = {
    "landing/customers": "landing",
    "bronze/customers": "bronze",
    "quarantine/customers": "bronze",
    "landing/psp_payouts": "landing",
    "bronze/psp_payouts": "bronze",
    "quarantine/psp_payouts": "bronze",
    "landing/payment_events": "landing",
    "bronze/payment_events": "bronze",
    "quarantine/payment_events": "bronze",
    "silver/stg_acme__customer_versions": "silver",
    "silver/stg_acme__customers": "silver",
    "silver/stg_psp__payment_events": "silver",
    "silver/stg_psp__charges": "silver",
    "silver/stg_psp__payouts": "silver",
    "gold/customers_snapshot": "gold",
    "gold/dim_customers": "gold",
    "gold/fct_customer_daily_metrics": "gold",
    "gold/fct_payments": "gold",
    "gold/fct_daily_revenue": "gold",
    "gold/payout_reconciliation": "gold",
    "airbyte/shop_orders_sync": "landing",
    "bronze/orders": "bronze",
    "quarantine/orders": "bronze",
    "silver/stg_shop__orders": "silver",
    "gold/fct_customer_revenue": "gold",
    "gold/orders_without_successful_charge": "gold",
    "gold/customer_segments": "gold",
    "reverse_etl/crm_customer_scores": "reverse_etl",
    # added by declaration only (lib/sources/registry.py) plus their dbt staging models
    "landing/consents": "landing",
    "bronze/consents": "bronze",
    "quarantine/consents": "bronze",
    "silver/stg_acme__consents": "silver",
    "landing/shop_events": "landing",
    "bronze/shop_events": "bronze",
    "quarantine/shop_events": "bronze",
    "silver/stg_shop__events": "silver",
}

EXPECTED_GATES = {
    ("bronze/customers", "gx_bronze_gate"),
    ("bronze/psp_payouts", "gx_bronze_gate"),
    ("bronze/payment_events", "gx_bronze_gate"),
    ("silver/stg_acme__customers", "gx_silver_gate"),
    ("gold/dim_customers", "gx_gold_gate"),
    ("gold/payout_reconciliation", "gx_gold_gate"),
    ("bronze/orders", "gx_bronze_gate"),
    ("gold/customer_segments", "gx_gold_gate"),
    ("bronze/consents", "gx_bronze_gate"),
    ("bronze/shop_events", "gx_bronze_gate"),
}


@functools.cache
def _defs() -> dg.Definitions:
    """Loaded and validated once for the module: every test here only reads the definitions."""
    defs = load_defs()
    defs.validate_loadable(defs)
    return defs


def test_asset_keys_and_groups_snapshot():
    specs = {s.key.to_user_string(): s.group_name for s in _defs().resolve_all_asset_specs()}
    assert specs == EXPECTED_ASSETS


def test_every_layer_gate_is_a_blocking_check():
    graph = _defs().resolve_asset_graph()
    checks = {key: graph.get_check_spec(key) for key in graph.asset_check_keys}
    gates = {(k.asset_key.to_user_string(), k.name) for k, spec in checks.items() if spec.blocking}
    assert EXPECTED_GATES <= gates
    # dbt tests are asset checks too.
    assert any(k.name.startswith("unique_stg_acme__customers") for k in checks)


def test_silver_and_gold_follow_upstream_only_past_passing_gates():
    graph = _defs().resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        condition = graph.get(key).automation_condition
        if key.path[0] in ("silver", "gold", "reverse_etl"):
            assert condition == FOLLOW_UPSTREAM, key
        else:
            assert condition is None, key


def test_sensors_and_jobs():
    defs = _defs()
    assert {s.name for s in defs.sensors or []} == {
        "sftp_inbox_sensor",
        "webhook_events_sensor",
        "shop_orders_landed_sensor",
    }
    assert {j.name for j in defs.resolve_all_job_defs()} >= {
        "customers_intake",
        "psp_payouts_intake",
        "consents_intake",
        "payment_events_ingest",
        "shop_events_ingest",
    }


def test_every_registered_source_has_bronze_quarantine_and_a_blocking_gate():
    graph = _defs().resolve_asset_graph()
    for name in SOURCES:
        bronze, quarantine = dg.AssetKey(["bronze", name]), dg.AssetKey(["quarantine", name])
        assert graph.has(bronze) and graph.has(quarantine), name
        assert graph.get_check_spec(dg.AssetCheckKey(bronze, "gx_bronze_gate")).blocking, name


@pytest.mark.slow  # a fresh interpreter loads the whole code location
def test_the_code_location_loads_without_the_heavy_libraries():
    """Every run pod and the code server load the definitions: what only a run needs is imported by the run."""
    heavy = ["great_expectations", "pandera", "polars", "sqlalchemy", "paramiko", "airbyte_api", "deltalake", "duckdb"]
    code = (
        "import sys\n"
        "import dagster_project.definitions as d\n"
        "d.defs().resolve_asset_graph()\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip().splitlines()[-1] == "[]"
