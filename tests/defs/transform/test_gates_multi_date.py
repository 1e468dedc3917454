"""A run that covers several business dates (a backfill run as one, automation catching up) records each
partitioned gate's result on every date of the run, so the UI shows it and automation goes on past it."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from dagster_project.defs.common.resources import LakeResource
from dagster_project.defs.transform import checks
from dagster_project.defs.transform.assets import dbt_assets_definitions
from dagster_project.defs.transform.resources import MedallionDbtCliResource

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dbt_assets")]  # dbt through Dagster, one parse

DAYS = ["2025-01-01", "2025-01-02"]
SILVER = dg.AssetKey(["silver", "stg_acme__customers"])
GOLD = dg.AssetKey(["gold", "dim_customers"])
CUSTOMERS_SLICE = [
    dg.AssetKey(["silver", "stg_acme__customer_versions"]),
    SILVER,
    dg.AssetKey(["gold", "customers_history"]),
    GOLD,
]
daily = next(step for step in dbt_assets_definitions() if SILVER in step.keys).partitions_def


# What automation asks of a dep before it moves on: its blocking checks passed, on each of its own dates.
@dg.asset(
    deps=[GOLD],
    partitions_def=daily,
    automation_condition=dg.AutomationCondition.all_deps_blocking_checks_passed(),
)
def downstream_of_gold() -> None: ...


def _defs(dbt: MedallionDbtCliResource, lake: Path) -> dg.Definitions:
    return dg.Definitions(
        assets=[*dbt_assets_definitions(), downstream_of_gold],
        asset_checks=checks.defs().asset_checks,
        resources={"dbt": dbt, "lake": LakeResource(root=str(lake))},
    )


def test_a_two_date_run_records_each_gate_on_both_dates_and_automation_goes_past_them(
    parsed_manifest: Path, dbt_resource: MedallionDbtCliResource, lake: Path
) -> None:
    defs = _defs(dbt_resource, lake)
    with dg.instance_for_test() as instance:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance,
            asset_selection=CUSTOMERS_SLICE,
            tags={"dagster/asset_partition_range_start": DAYS[0], "dagster/asset_partition_range_end": DAYS[-1]},
            raise_on_error=False,
        )

        assert result.success
        gates = {
            (e.asset_key, e.partition): e.passed
            for e in result.get_asset_check_evaluations()
            if e.check_name.startswith("gx_")
        }
        assert gates == {(key, day): True for key in (SILVER, GOLD) for day in DAYS}
        # The instance holds them as current results of those dates: automation sees gold's gate passed.
        evaluated = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=dg.AssetSelection.assets(downstream_of_gold)
        )
        assert evaluated.get_requested_partitions(downstream_of_gold.key) >= set(DAYS)
