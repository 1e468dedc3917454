"""The blocking checks of a daily dbt step (its dbt tests and its Great Expectations gate) are checks of each
business date. A run that covers several dates (a backfill run as one, automation catching up) records each
result on every date of the run, and runs of different dates that overlap keep each date's results its own: the
UI shows them, and automation goes on past them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from dagster_project.definitions import DEPS_BLOCKING_CHECKS_PASSED
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


# A full-table child of the daily silver model (as the payment marts are of the daily payment models), with the
# platform's own test of its deps' blocking checks.
@dg.asset(deps=[SILVER], automation_condition=DEPS_BLOCKING_CHECKS_PASSED)
def table_from_silver() -> None: ...


def _defs(dbt: MedallionDbtCliResource, lake: Path) -> dg.Definitions:
    return dg.Definitions(
        assets=[*dbt_assets_definitions(), downstream_of_gold, table_from_silver],
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
        evaluations = result.get_asset_check_evaluations()
        gates = {(e.asset_key, e.partition): e.passed for e in evaluations if e.check_name.startswith("gx_")}
        assert gates == {(key, day): True for key in (SILVER, GOLD) for day in DAYS}
        dbt_tests = {e.check_name for e in evaluations if e.asset_key == SILVER and not e.check_name.startswith("gx_")}
        assert "unique_stg_acme__customers_customer_id" in dbt_tests
        for test in dbt_tests:
            assert {e.partition: e.passed for e in evaluations if e.check_name == test} == dict.fromkeys(DAYS, True)
        # The instance holds them as current results of those dates: automation sees gold's gate passed.
        evaluated = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=dg.AssetSelection.assets(downstream_of_gold)
        )
        assert evaluated.get_requested_partitions(downstream_of_gold.key) >= set(DAYS)


def test_overlapping_runs_of_two_dates_keep_each_dates_tests_passed(
    parsed_manifest: Path, dbt_resource: MedallionDbtCliResource, lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Automation starts one run per date. Here the first date's run builds the model, the second date's run
    builds it and tests it, and only then does the first run's dbt report its tests: the latest test results
    are the first date's, the latest materialization the second's. Each date's tests still count as passed,
    and the full-table child is not held back."""
    defs = _defs(dbt_resource, lake)
    job = defs.resolve_implicit_global_asset_job_def()
    first, second = DAYS
    first_built, second_done = threading.Event(), threading.Event()
    cli = MedallionDbtCliResource.cli

    def cli_holding_the_first_dates_tests(self: MedallionDbtCliResource, args: Any, **kwargs: Any) -> Any:
        invocation = cli(self, args, **kwargs)
        if kwargs["context"].partition_key != first:
            return invocation
        events = invocation.stream

        def held() -> Iterator[Any]:
            for event in events():
                if isinstance(event, dg.AssetCheckResult) and event.asset_key == SILVER and not first_built.is_set():
                    first_built.set()
                    assert second_done.wait(timeout=600), "the second date's run never finished"
                yield event

        invocation.stream = held
        return invocation

    monkeypatch.setattr(MedallionDbtCliResource, "cli", cli_holding_the_first_dates_tests)

    with dg.instance_for_test() as instance:

        def run(day: str) -> dg.ExecuteInProcessResult:
            return job.execute_in_process(
                instance=instance, partition_key=day, asset_selection=CUSTOMERS_SLICE[:2], raise_on_error=False
            )

        results: dict[str, dg.ExecuteInProcessResult] = {}

        def first_date() -> None:
            try:
                results[first] = run(first)
            finally:
                first_built.set()  # a run that failed before its tests lets the test go on and fail below

        first_run = threading.Thread(target=first_date)
        first_run.start()
        assert first_built.wait(timeout=600), "the first date's run never built the model"
        try:
            results[second] = run(second)
        finally:
            second_done.set()
            first_run.join()

        assert results[first].success and results[second].success

        # What made Dagster count a date's tests as stale: the first date's results came after the second's build.
        [latest_build] = instance.fetch_materializations(SILVER, limit=1).records
        assert latest_build.run_id == results[second].run_id
        first_results = instance.get_records_for_run(
            results[first].run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ).records
        tested = [
            r.timestamp
            for r in first_results
            if r.event_log_entry.dagster_event.event_specific_data.asset_key == SILVER
        ]
        assert tested and min(tested) > latest_build.timestamp
        for day, result in results.items():
            tests = [e for e in result.get_asset_check_evaluations() if e.asset_key == SILVER]
            assert len(tests) > 1 and {(e.partition, e.passed) for e in tests} == {(day, True)}
        evaluated = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=dg.AssetSelection.assets(table_from_silver)
        )
        assert evaluated.get_num_requested(table_from_silver.key) == 1
