"""The automation policy on both kinds of dbt steps: daily (incremental) and unpartitioned (full tables).

Stand-in assets with the shapes of the real graph (daily bronze with a blocking gate, daily and
unpartitioned silver, unpartitioned gold) keep this fast; the real graph is exercised in tests/e2e.
"""

from __future__ import annotations

import dagster as dg

from dagster_project.definitions import FOLLOW_UPSTREAM
from dagster_project.defs.common.partitions import daily_partitions

GATE_PASSES = {"value": True}
SILVER_TEST_PASSES = {"value": True}


@dg.asset(key=["bronze", "feed"], partitions_def=daily_partitions)
def bronze() -> None: ...


@dg.asset_check(asset=bronze, blocking=True, partitions_def=daily_partitions)
def gate() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=GATE_PASSES["value"])


@dg.asset(key=["silver", "daily"], deps=[bronze], partitions_def=daily_partitions, automation_condition=FOLLOW_UPSTREAM)
def silver_daily() -> None: ...


@dg.asset_check(asset=silver_daily, blocking=True, partitions_def=daily_partitions)
def silver_test() -> dg.AssetCheckResult:  # a dbt test: it rides along with its model, never requested itself
    return dg.AssetCheckResult(passed=SILVER_TEST_PASSES["value"])


@dg.asset(
    key=["gold", "daily"], deps=[silver_daily], partitions_def=daily_partitions, automation_condition=FOLLOW_UPSTREAM
)
def gold_daily() -> None: ...


@dg.asset(key=["silver", "table"], deps=[bronze], automation_condition=FOLLOW_UPSTREAM)
def silver_table() -> None: ...


@dg.asset(key=["gold", "table"], deps=[silver_daily, silver_table], automation_condition=FOLLOW_UPSTREAM)
def gold() -> None: ...


DEFS = dg.Definitions(assets=[bronze, silver_daily, silver_table, gold, gold_daily], asset_checks=[gate, silver_test])
DOWNSTREAM = [silver_daily.key, silver_table.key, gold.key, gold_daily.key]


def test_daily_and_unpartitioned_steps_follow_upstream_only_past_passing_gates() -> None:
    job = DEFS.resolve_implicit_global_asset_job_def()

    def run(keys: list[dg.AssetKey], day: str | None = None) -> None:
        job.execute_in_process(instance=instance, partition_key=day, asset_selection=keys, raise_on_error=False)

    def requested() -> dict[str, list[str | None]]:
        nonlocal cursor
        result = dg.evaluate_automation_conditions(defs=DEFS, instance=instance, cursor=cursor)
        cursor = result.cursor
        return {
            key.to_user_string(): sorted(result.get_requested_partitions(key), key=str)
            for key in DOWNSTREAM
            if result.get_num_requested(key)
        }

    with dg.instance_for_test() as instance:
        cursor = None
        assert requested() == {}  # nothing upstream yet

        # Bronze has one day out of hundreds: the unpartitioned table does not wait for the other days. The
        # daily gold goes in the same run as its daily silver, whose test has never run: it runs in that run.
        GATE_PASSES["value"] = True
        run([bronze.key], "2025-01-02")
        day = ["2025-01-02"]
        assert requested() == {"silver/daily": day, "silver/table": [None], "gold/daily": day}
        run([silver_daily.key, silver_table.key, gold_daily.key], "2025-01-02")
        assert requested() == {"gold/table": [None]}
        run([gold.key])
        assert requested() == {}

        # A failed gate on any day holds back the daily step for that day and the unpartitioned ones.
        GATE_PASSES["value"] = False
        run([bronze.key], "2025-01-03")
        assert requested() == {}

        # Rebuilt and passing, the day flows on to every kind of step (gold in the same run as silver now
        # that it has been built before: a failure of silver in that run still stops it).
        GATE_PASSES["value"] = True
        run([bronze.key], "2025-01-03")
        day = ["2025-01-03"]
        assert requested() == {"silver/daily": day, "silver/table": [None], "gold/table": [None], "gold/daily": day}

        run([silver_daily.key, silver_table.key, gold.key, gold_daily.key], "2025-01-03")
        assert requested() == {}

        # A dbt test of silver fails: what reads that day of silver waits...
        SILVER_TEST_PASSES["value"] = False
        run([bronze.key], "2025-01-04")
        day = ["2025-01-04"]
        assert requested() == {"silver/daily": day, "silver/table": [None], "gold/table": [None], "gold/daily": day}
        run([silver_daily.key, silver_table.key], "2025-01-04")
        assert requested() == {}

        # ...until the model is rebuilt. Its daily child goes in the same run, where the rebuilt model's test
        # rides along and stops it if it fails again; the unpartitioned one cannot share that run and waits for
        # the test's result.
        SILVER_TEST_PASSES["value"] = True
        run([bronze.key], "2025-01-04")
        assert requested() == {"silver/daily": day, "silver/table": [None], "gold/daily": day}
        run([silver_daily.key, silver_table.key, gold_daily.key], "2025-01-04")
        assert requested() == {"gold/table": [None]}
