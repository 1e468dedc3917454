from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from types import ModuleType

import dagster as dg
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from dagster_project import settings
from dagster_project.defs.common.partitions import LAKE_REBUILD_POOL, daily_partitions
from dagster_project.defs.transform.resources import (
    DbtManifestMissingError,
    MedallionDbtCliResource,
    dbt_cli_version,
    dbt_executable,
    load_dbt_project,
)
from dagster_project.lib.lake import Lake
from tests.dbt.support import customer, write_bronze_partition

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dbt_assets")]  # dbt through Dagster, one parse

INCREMENTAL_SILVER_KEYS = {
    dg.AssetKey(["silver", "stg_acme__customer_versions"]),
    dg.AssetKey(["silver", "stg_acme__customers"]),
    dg.AssetKey(["silver", "stg_psp__payment_events"]),
    dg.AssetKey(["silver", "stg_psp__charges"]),
}
FULL_SILVER_KEYS = {
    dg.AssetKey(["silver", "stg_acme__consents"]),
    dg.AssetKey(["silver", "stg_psp__payouts"]),
    dg.AssetKey(["silver", "stg_shop__orders"]),
    dg.AssetKey(["silver", "stg_shop__events"]),
}
SILVER_KEYS = INCREMENTAL_SILVER_KEYS | FULL_SILVER_KEYS
INCREMENTAL_GOLD_KEYS = {
    dg.AssetKey(["gold", "customers_history"]),
    dg.AssetKey(["gold", "dim_customers"]),
    dg.AssetKey(["gold", "fct_customer_daily_metrics"]),
}
GOLD_KEYS = {
    dg.AssetKey(["gold", "customers_history"]),
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
CUSTOMERS_SLICE = {  # bronze customers to gold customers: what the runs below build
    dg.AssetKey(["silver", "stg_acme__customer_versions"]),
    dg.AssetKey(["silver", "stg_acme__customers"]),
    dg.AssetKey(["gold", "customers_history"]),
    dg.AssetKey(["gold", "dim_customers"]),
    dg.AssetKey(["gold", "fct_customer_daily_metrics"]),
}


@pytest.fixture(scope="session")
def assets(parsed_manifest: Path) -> ModuleType:
    return importlib.import_module("dagster_project.defs.transform.assets")


@pytest.fixture(scope="session")
def steps(assets: ModuleType) -> dict[str, dg.AssetsDefinition]:
    return {step.op.name: step for step in assets.dbt_assets_definitions()}


def test_asset_keys_groups_and_layers(assets: ModuleType, steps: dict[str, dg.AssetsDefinition]) -> None:
    graph = assets.defs().resolve_asset_graph()

    assert set(steps) == {"dbt_silver_daily", "dbt_silver", "dbt_gold_daily", "dbt_gold"}
    assert set(steps["dbt_silver_daily"].keys) | set(steps["dbt_silver"].keys) == SILVER_KEYS
    assert set(steps["dbt_gold_daily"].keys) == INCREMENTAL_GOLD_KEYS
    assert set(steps["dbt_gold_daily"].keys) | set(steps["dbt_gold"].keys) == GOLD_KEYS
    assert graph.materializable_asset_keys == SILVER_KEYS | GOLD_KEYS
    for key in SILVER_KEYS | GOLD_KEYS:
        assert graph.get(key).group_name == key.path[0]
    assert graph.get(dg.AssetKey(["silver", "stg_acme__customer_versions"])).parent_keys == {BRONZE_CUSTOMERS}
    assert graph.get(dg.AssetKey(["gold", "customers_history"])).parent_keys == {
        dg.AssetKey(["silver", "stg_acme__customer_versions"])
    }


def test_incremental_models_are_partitioned_and_full_tables_are_not(steps: dict[str, dg.AssetsDefinition]) -> None:
    daily = steps["dbt_silver_daily"]
    assert set(daily.keys) == INCREMENTAL_SILVER_KEYS
    assert daily.partitions_def == daily_partitions
    assert daily.backfill_policy == dg.BackfillPolicy.single_run()
    for name in ("dbt_silver", "dbt_gold"):
        assert steps[name].partitions_def is None
        assert steps[name].backfill_policy is None
    # Partitions build side by side (Delta commits per partition); full rebuilds take the one pool slot.
    assert steps["dbt_silver_daily"].op.pool is None
    assert steps["dbt_silver"].op.pool == steps["dbt_gold"].op.pool == LAKE_REBUILD_POOL
    # No retry policy: a step asks to run again only after a lost commit race (the test below).
    assert all(step.op.retry_policy is None for step in steps.values())


def test_the_step_of_a_model_is_found_by_its_name(assets: ModuleType, steps: dict[str, dg.AssetsDefinition]) -> None:
    assert assets.assets_for_model("stg_acme__customers") is steps["dbt_silver_daily"]
    assert assets.assets_for_model("stg_shop__orders") is steps["dbt_silver"]
    assert assets.assets_for_model("customers_history") is steps["dbt_gold_daily"]
    assert assets.assets_for_model("customer_segments") is steps["dbt_gold"]
    assert assets.model_key("customer_segments") == dg.AssetKey(["gold", "customer_segments"])
    # Built once: the definitions and the gates built from them share the same objects.
    assert assets.dbt_assets_definitions() is assets.dbt_assets_definitions()
    with pytest.raises(KeyError, match="no_such_model"):
        assets.assets_for_model("no_such_model")


def test_dbt_tests_are_blocking_checks_on_their_models(steps: dict[str, dg.AssetsDefinition]) -> None:
    checks = [spec for step in steps.values() for spec in step.check_specs]

    checked = {spec.asset_key for spec in checks}
    assert checked == SILVER_KEYS | GOLD_KEYS
    assert all(spec.blocking for spec in checks)
    assert {
        spec.name for spec in steps["dbt_silver_daily"].check_specs if spec.asset_key.path[-1] == "stg_acme__customers"
    } >= {
        "unique_stg_acme__customers_customer_id",
        "not_null_stg_acme__customers_customer_id",
    }


def test_layers_follow_the_dbt_folders(assets: ModuleType) -> None:
    assert assets.dbt_selection("silver") == "path:models/staging"
    assert assets.dbt_selection("gold") == "path:models/marts"
    gold_daily = assets.DbtStep("gold", partitioned=True)
    assert gold_daily.select == "path:models/marts,config.materialized:incremental"
    assert assets.DbtStep("gold", partitioned=False).exclude == "config.materialized:incremental"
    with pytest.raises(ValueError, match="outside the layer folders"):
        assets.layer_of({"resource_type": "model", "name": "x", "original_file_path": "models/adhoc/x.sql"})


def test_partition_window_becomes_inclusive_business_dates(assets: ModuleType) -> None:
    one_day = daily_partitions.time_window_for_partition_key("2025-03-01")
    several = dg.TimeWindow(
        daily_partitions.time_window_for_partition_key("2025-02-27").start,
        one_day.end,
    )

    assert assets.partition_window_dates(one_day) == ("2025-03-01", "2025-03-01")
    assert assets.partition_window_dates(several) == ("2025-02-27", "2025-03-01")


def test_a_command_gets_its_lake_and_window_from_its_run_file_and_reuses_the_project_parse(
    dbt_resource: MedallionDbtCliResource,
) -> None:
    """The fixture's lake is in no variable, and no command has vars: both reach dbt in the run file only. Each
    command, whatever its window, reuses the parse of the project (`make install`'s) instead of parsing it
    again, which vars or a profile rendered from them would cost (about 4 s of CPU a command)."""
    test = "not_null_stg_acme__customer_versions_customer_id.sql"  # a data test on the run's window
    for window, predicate in [
        (("2025-01-01", "2025-01-01"), "business_date between date '2025-01-01' and date '2025-01-01'"),
        (("2025-01-01", "2025-01-02"), "business_date between date '2025-01-01' and date '2025-01-02'"),
        (None, "where (true)"),
    ]:
        invocation = dbt_resource.cli(["compile", "--select", "stg_acme__customer_versions"], window=window)
        invocation.wait()
        [compiled] = (invocation.target_path / "compiled").rglob(test)
        assert predicate in compiled.read_text()
        log = (invocation.target_path / "dbt.log").read_text()
        assert "Partial parsing enabled, no changes found, skipping parsing" in log
        assert "Unable to do partial parsing" not in log


def test_the_dbt_version_is_the_one_the_cli_prints_and_is_asked_once_per_process(tmp_path: Path) -> None:
    printed = subprocess.run([dbt_executable(), "--version"], capture_output=True, text=True, check=True).stdout
    assert str(dbt_cli_version(dbt_executable())) in printed  # the installed package, without a subprocess

    calls = tmp_path / "calls"
    other = tmp_path / "dbt"  # a dbt that is not this interpreter's: asked, once
    other.write_text(f"#!/bin/sh\necho x >> {calls}\necho 'Core:\n  - installed: 1.99.3'\n")
    other.chmod(0o755)
    project = str(settings.dbt_project_dir())
    resources = [
        MedallionDbtCliResource(project_dir=project, lake_root="/lake", dbt_executable=str(other)) for _ in range(3)
    ]
    assert {str(r._cli_version) for r in resources} == {"1.99.3"}
    assert calls.read_text() == "x\n"


def test_missing_manifest_fails_with_the_fix(tmp_path: Path) -> None:
    shutil.copy(settings.dbt_project_dir() / "dbt_project.yml", tmp_path / "dbt_project.yml")

    with pytest.raises(DbtManifestMissingError, match="dbt parse"):
        load_dbt_project(tmp_path)


def test_under_dagster_dev_the_manifest_is_parsed_again_and_swapped_in_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "dbt_project"
    shutil.copytree(settings.dbt_project_dir(), project, ignore=shutil.ignore_patterns("target", "logs"))
    (project / "target").mkdir()
    (project / "target" / "manifest.json").write_text("{}")  # stale: what a reader would see until the swap
    monkeypatch.setenv("DAGSTER_IS_DEV_CLI", "1")
    monkeypatch.setenv("PATH", os.defpath)  # `.venv/bin/medallion dev` without the environment on PATH

    loaded = load_dbt_project(project)

    manifest = json.loads(loaded.manifest_path.read_text())
    assert "model.medallion.stg_acme__customers" in manifest["nodes"]
    assert not list((project / "target").glob(".parse-*"))  # the scratch parse is gone


def test_definitions_load_with_the_settings_as_resource_config(
    assets: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDALLION_LAKE_ROOT", "s3://acme-lake/lake")

    defs = assets.defs()

    dg.Definitions.validate_loadable(defs)
    assert defs.resources["dbt"].lake_root == "s3://acme-lake/lake"


def _materialize(
    steps: dict[str, dg.AssetsDefinition], dbt: MedallionDbtCliResource, instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    """One run of the customers slice for business date 2025-01-02, as a bronze backfill triggers it."""
    job = dg.Definitions(assets=list(steps.values()), resources={"dbt": dbt}).resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance, partition_key="2025-01-02", asset_selection=list(CUSTOMERS_SLICE), raise_on_error=False
    )


def test_materialize_one_partition_runs_dbt_build_and_its_checks(
    steps: dict[str, dg.AssetsDefinition], dbt_resource: MedallionDbtCliResource, lake: Path
) -> None:
    environ = dict(os.environ)
    with dg.instance_for_test() as instance:
        result = _materialize(steps, dbt_resource, instance)

        assert result.success
        materialized = {m.asset_key: m.partition for m in result.get_asset_materialization_events()}
        assert set(materialized) == CUSTOMERS_SLICE
        # Partition status says what is true: every model of the slice is incremental and records the day.
        assert {k for k, partition in materialized.items() if partition == "2025-01-02"} == CUSTOMERS_SLICE
        evaluations = result.get_asset_check_evaluations()
        assert {e.asset_key for e in evaluations} == CUSTOMERS_SLICE
        assert all(e.passed for e in evaluations)
        reported = {
            m.asset_key.to_user_string(): {k: v.value for k, v in m.materialization.metadata.items()}
            for m in result.get_asset_materialization_events()
        }
    # The dbt subprocess used the lake of the resource config; this process's environment was left alone.
    assert dict(os.environ) == environ
    assert "MEDALLION_LAKE_ROOT" not in environ
    with (lakehouse := Lake.parse(str(lake))).connect() as con:
        lakehouse.attach(con)
        silver = dict(con.execute("select customer_id, status from silver.stg_acme__customers").fetchall())
        history = con.execute("select count(*) from gold.dim_customers").fetchone()
    assert silver == {1: "closed", 2: "active"}
    assert history == (3,)  # every version bronze holds: customer 1 on both days, customer 2 once
    # Each materialization says what its Delta table holds: rows, the run's day, columns with real types.
    assert reported["gold/dim_customers"]["dagster/row_count"] == 3
    assert reported["silver/stg_acme__customers"]["dagster/row_count"] == 2
    with (lakehouse := Lake.parse(str(lake))).connect() as con:
        lakehouse.attach(con)
        versions_of_the_day = con.execute(
            "select count(*) from silver.stg_acme__customer_versions where business_date = '2025-01-02'"
        ).fetchone()[0]
    assert reported["silver/stg_acme__customer_versions"]["dagster/partition_row_count"] == versions_of_the_day > 0
    columns = {c.name: c for c in reported["silver/stg_acme__customers"]["dagster/column_schema"].columns}
    assert (columns["customer_id"].type, columns["business_date"].type) == ("int64", "date32[day]")
    assert columns["customer_id"].description == "CRM customer id; primary key."
    assert columns["customer_id"].constraints.unique


def test_a_failing_silver_test_stops_gold_in_the_same_run(
    steps: dict[str, dg.AssetsDefinition], dbt_resource: MedallionDbtCliResource, lake: Path
) -> None:
    # Day 2 is re-delivered with a status outside the contract of silver.
    day_2 = [
        customer(1, "2025-01-02", "2025-01-02T08:00:00", email="ada@example.com", status="closed", row=1),
        customer(3, "2025-01-02", "2025-01-02T09:00:00", email="cy@example.net", status="suspended", row=2),
    ]
    write_bronze_partition(lake, "2025-01-02", day_2)

    with dg.instance_for_test() as instance:
        result = _materialize(steps, dbt_resource, instance)

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
        assert "dbt_gold" not in {e.step_key for e in result.get_step_success_events()}
        # A failed test is not run again: only a lost commit race is.
        assert not [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]


def test_a_lost_commit_race_runs_dbt_again_from_fresh_inputs(
    assets: ModuleType,
    steps: dict[str, dg.AssetsDefinition],
    dbt_resource: MedallionDbtCliResource,
    lake: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with dg.instance_for_test() as instance:
        assert _materialize(steps, dbt_resource, instance).success  # the merged model's table exists now
        # Day 2 is delivered again with a change: the next run merges it into silver.
        day_2 = [
            customer(1, "2025-01-02", "2025-01-02T08:00:00", email="ada@example.com", status="closed", row=1),
            customer(2, "2025-01-02", "2025-01-02T09:00:00", email="bob@example.org", status="inactive", row=2),
        ]
        write_bronze_partition(lake, "2025-01-02", day_2)
        # Another writer commits new customers to the merged silver table, one after the other, until the step
        # has lost a race to it and asks to run again.
        table = str(lake / "silver" / "stg_acme__customers")
        template = DeltaTable(table).to_pyarrow_table().slice(0, 1)
        # Of a day outside the run's window: the run recomputes the customers of its day only, and keeps these.
        day = template.schema.get_field_index("business_date")
        template = template.set_column(day, "business_date", pa.array([dt.date(2025, 1, 1)], template.column(day).type))
        key = template.schema.get_field_index("customer_id")
        lost = threading.Event()
        committed: list[int] = []

        def other_writer() -> None:
            while not lost.is_set():
                customer_id = 1000 + len(committed)
                row = template.set_column(key, "customer_id", pa.array([customer_id], template.column(key).type))
                write_deltalake(table, row, mode="append")
                committed.append(customer_id)

        delays: list[int] = []

        def conflict_delay(retry_number: int) -> float:
            delays.append(retry_number)
            lost.set()
            return 0.0

        monkeypatch.setattr(assets, "conflict_delay", conflict_delay)
        writer = threading.Thread(target=other_writer)
        writer.start()
        try:
            result = _materialize(steps, dbt_resource, instance)
        finally:
            lost.set()
            writer.join()

        assert result.success
        assert delays == [0]
        retried = [e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
        assert retried == ["dbt_silver_daily"]
    # The run that went again read the other writer's commits instead of overriding them.
    with (lakehouse := Lake.parse(str(lake))).connect() as con:
        lakehouse.attach(con)
        customers = {r[0] for r in con.execute("select customer_id from silver.stg_acme__customers").fetchall()}
        statuses = dict(con.execute("select customer_id, status from silver.stg_acme__customers").fetchall())
    assert committed and customers == {1, 2, *committed}
    assert (statuses[1], statuses[2]) == ("closed", "inactive")
