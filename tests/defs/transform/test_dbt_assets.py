from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from types import ModuleType

import dagster as dg
import duckdb
import pytest

from dagster_project import settings
from dagster_project.defs.common.partitions import WAREHOUSE_POOL, daily_partitions
from dagster_project.defs.transform.resources import DbtManifestMissingError, load_dbt_project
from tests.dbt.support import customer, write_bronze_partition

SILVER_KEYS = {
    dg.AssetKey(["silver", "stg_acme__customer_versions"]),
    dg.AssetKey(["silver", "stg_acme__customers"]),
    dg.AssetKey(["silver", "stg_psp__payment_events"]),
    dg.AssetKey(["silver", "stg_psp__charges"]),
    dg.AssetKey(["silver", "stg_psp__payouts"]),
    dg.AssetKey(["silver", "stg_shop__orders"]),
}
GOLD_KEYS = {
    dg.AssetKey(["gold", "customers_snapshot"]),
    dg.AssetKey(["gold", "dim_customers"]),
    dg.AssetKey(["gold", "fct_customer_daily_metrics"]),
    dg.AssetKey(["gold", "fct_payments"]),
    dg.AssetKey(["gold", "fct_daily_revenue"]),
    dg.AssetKey(["gold", "payout_reconciliation"]),
    dg.AssetKey(["gold", "fct_customer_revenue"]),
    dg.AssetKey(["gold", "orders_without_successful_charge"]),
    dg.AssetKey(["gold", "customer_segments"]),
}
BRONZE_CUSTOMERS = dg.AssetKey(["bronze", "customers"])


@pytest.fixture(scope="session")
def assets(parsed_manifest: Path) -> ModuleType:
    return importlib.import_module("dagster_project.defs.transform.assets")


def test_asset_keys_groups_and_layers(assets: ModuleType) -> None:
    graph = assets.defs.resolve_asset_graph()

    assert set(assets.dbt_silver.keys) == SILVER_KEYS
    assert set(assets.dbt_gold.keys) == GOLD_KEYS
    assert graph.materializable_asset_keys == SILVER_KEYS | GOLD_KEYS
    for key in SILVER_KEYS | GOLD_KEYS:
        assert graph.get(key).group_name == key.path[0]
    assert graph.get(dg.AssetKey(["silver", "stg_acme__customer_versions"])).parent_keys == {BRONZE_CUSTOMERS}
    assert graph.get(dg.AssetKey(["gold", "customers_snapshot"])).parent_keys == {
        dg.AssetKey(["silver", "stg_acme__customers"])
    }


def test_both_steps_are_partitioned_single_run_and_pooled(assets: ModuleType) -> None:
    for step in (assets.dbt_silver, assets.dbt_gold):
        assert step.partitions_def == daily_partitions
        assert step.backfill_policy == dg.BackfillPolicy.single_run()
        assert step.op.pool == WAREHOUSE_POOL


def test_dbt_tests_are_blocking_checks_on_their_models(assets: ModuleType) -> None:
    checks = list(assets.dbt_silver.check_specs) + list(assets.dbt_gold.check_specs)

    checked = {spec.asset_key for spec in checks}
    assert checked == SILVER_KEYS | GOLD_KEYS - {dg.AssetKey(["gold", "customers_snapshot"])}
    assert all(spec.blocking for spec in checks)
    assert {
        spec.name for spec in assets.dbt_silver.check_specs if spec.asset_key.path[-1] == "stg_acme__customers"
    } >= {
        "unique_stg_acme__customers_customer_id",
        "not_null_stg_acme__customers_customer_id",
    }


def test_layers_follow_the_dbt_folders(assets: ModuleType) -> None:
    assert assets.dbt_selection("silver") == "path:models/staging"
    assert assets.dbt_selection("gold") == "path:models/marts path:snapshots"
    with pytest.raises(ValueError, match="outside the layer folders"):
        assets.layer_of({"resource_type": "model", "name": "x", "original_file_path": "models/adhoc/x.sql"})


def test_partition_window_becomes_inclusive_dbt_vars(assets: ModuleType) -> None:
    one_day = daily_partitions.time_window_for_partition_key("2025-03-01")
    several = dg.TimeWindow(
        daily_partitions.time_window_for_partition_key("2025-02-27").start,
        one_day.end,
    )

    assert assets.partition_window_vars(one_day) == {"min_date": "2025-03-01", "max_date": "2025-03-01"}
    assert assets.partition_window_vars(several) == {"min_date": "2025-02-27", "max_date": "2025-03-01"}


def test_missing_manifest_fails_with_the_fix(tmp_path: Path) -> None:
    shutil.copy(settings.dbt_project_dir() / "dbt_project.yml", tmp_path / "dbt_project.yml")

    with pytest.raises(DbtManifestMissingError, match="dbt parse"):
        load_dbt_project(tmp_path)


def test_definitions_load(assets: ModuleType) -> None:
    dg.Definitions.validate_loadable(assets.defs)


def test_materialize_one_partition_runs_dbt_build_and_its_checks(assets: ModuleType, lake: Path) -> None:
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [assets.dbt_silver, assets.dbt_gold],
            partition_key="2025-01-02",
            resources={"dbt": assets.defs.resources["dbt"]},
            instance=instance,
        )

        assert result.success
        materialized = {m.asset_key for m in result.get_asset_materialization_events()}
        assert materialized == SILVER_KEYS | GOLD_KEYS
        evaluations = result.get_asset_check_evaluations()
        assert {e.asset_key for e in evaluations} >= SILVER_KEYS
        assert len(evaluations) == len(assets.dbt_silver.check_specs) + len(assets.dbt_gold.check_specs)
        assert all(e.passed for e in evaluations)
        record = instance.get_latest_materialization_event(dg.AssetKey(["silver", "stg_acme__customers"]))
        assert record is not None and record.asset_materialization.partition == "2025-01-02"

    # The dbt subprocess used the lake and warehouse settings resolve (the tmp ones).
    with duckdb.connect(str(settings.warehouse_path()), read_only=True) as con:
        silver = dict(con.execute("select customer_id, status from silver.stg_acme__customers").fetchall())
        history = con.execute("select count(*) from gold.dim_customers").fetchone()
    assert silver == {1: "closed", 2: "active"}
    assert history == (2,)


def test_a_failing_silver_test_stops_gold_in_the_same_run(assets: ModuleType, lake: Path) -> None:
    # Day 2 is re-delivered with a status outside the contract of silver.
    day_2 = [
        customer(1, "2025-01-02", "2025-01-02T08:00:00", email="ada@example.com", status="closed", row=1),
        customer(3, "2025-01-02", "2025-01-02T09:00:00", email="cy@example.net", status="suspended", row=2),
    ]
    write_bronze_partition(lake, "2025-01-02", day_2)

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [assets.dbt_silver, assets.dbt_gold],
            partition_key="2025-01-02",
            resources={"dbt": assets.defs.resources["dbt"]},
            instance=instance,
            raise_on_error=False,
        )

        assert not result.success
        failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
        assert {(e.asset_key, e.check_name) for e in failed} == {
            (
                dg.AssetKey(["silver", "stg_acme__customer_versions"]),
                "accepted_values_stg_acme__customer_versions_status__active__inactive__closed",
            )
        }
        materialized = {m.asset_key for m in result.get_asset_materialization_events()}
        assert not materialized & GOLD_KEYS
