"""The customers slice is incremental by business date and still a pure function of bronze: days loaded out of
order, late and re-delivered changes, a backfill of an old day, records removed from bronze and an emptied
partition, each run as the partition run Dagster makes, leave every silver and gold table of the slice exactly
as a full refresh from all of bronze does; and a run writes only what its window changed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb
import pytest
from deltalake import DeltaTable

from dagster_project import settings
from dagster_project.lib.quality.dbt_rules import load_manifest, model_gates
from dagster_project.lib.quality.gx_runner import validate_lake
from tests.dbt.support import Dbt, customer, failing_tests, window, write_bronze_partition

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dbt-history")]  # dbt builds reusing one parse, on one worker

Connect = Callable[[], duckdb.DuckDBPyConnection]

DAY_1, DAY_2, DAY_3, DAY_4 = "2025-01-01", "2025-01-02", "2025-01-03", "2025-01-04"
CUSTOMERS = ["--select", "+stg_acme__customers +dim_customers +fct_customer_daily_metrics"]
TABLES = [
    "silver.stg_acme__customer_versions",
    "silver.stg_acme__customers",
    "gold.customers_history",
    "gold.dim_customers",
    "gold.fct_customer_daily_metrics",
]


def dump(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
    return {t: sorted(con.execute(f"select * from {t}").fetchall(), key=repr) for t in TABLES}


def days() -> dict[str, list[dict]]:
    def c(customer_id: int, day: str, at: str, status: str = "active", row: int = 1, **kw: str) -> dict:
        return customer(customer_id, day, at, email=f"c{customer_id}@example.com", status=status, row=row, **kw)

    return {
        DAY_1: [
            c(1, DAY_1, "2025-01-01T08:00:00", row=1),
            c(2, DAY_1, "2025-01-01T08:00:00", "inactive", row=2),
            c(3, DAY_1, "2025-01-01T08:00:00", row=3),
            # A change exported again on day 3 (same updated_at): one version, its later delivery.
            c(6, DAY_1, "2025-01-01T09:00:00", "closed", row=4),
        ],
        DAY_2: [
            c(1, DAY_2, "2025-01-02T08:00:00", "closed", row=1),
            c(4, DAY_2, "2025-01-02T08:00:00", row=2),
            # Late, out of order: older than customer 3's day-1 record, so it never becomes its state.
            c(3, DAY_2, "2024-12-31T08:00:00", "closed", row=3),
        ],
        DAY_3: [
            c(1, DAY_3, "2025-01-03T08:00:00", row=1, lifetime_value="20.00"),
            c(2, DAY_3, "2025-01-03T08:00:00", row=2),
            c(5, DAY_3, "2025-01-03T08:00:00", "inactive", row=3),
            c(6, DAY_3, "2025-01-01T09:00:00", "closed", row=4),
        ],
        DAY_4: [
            c(4, DAY_4, "2025-01-04T08:00:00", "inactive", row=1),
            c(5, DAY_4, "2025-01-04T08:00:00", row=2),
            c(7, DAY_4, "2025-01-04T08:00:00", row=3),
        ],
    }


@pytest.fixture
def assert_equals_full_refresh(dbt: Dbt, warehouse: Connect) -> Callable[[Sequence[str]], dict[str, list[tuple]]]:
    """Dump the slice, rebuild it from all of bronze with the same window, and check nothing changed."""

    def check(window: Sequence[str]) -> dict[str, list[tuple]]:
        con = warehouse()
        incremental = dump(con)
        con.close()
        dbt("build", "--full-refresh", *CUSTOMERS, window=window)
        rebuilt = dump(warehouse())
        for table in TABLES:
            assert incremental[table] == rebuilt[table], f"{table} differs from a full refresh"
        return incremental

    return check


def test_partition_runs_in_any_order_backfills_and_deletions_equal_a_full_refresh(
    lake: Path, dbt: Dbt, warehouse: Connect, assert_equals_full_refresh: Callable[[list[str]], dict]
) -> None:
    data = days()
    # Days arrive and run out of order: day 2 lands after day 3 has run.
    for day in (DAY_1, DAY_3, DAY_2, DAY_4):
        write_bronze_partition(lake, day, data[day])
        dbt("build", *CUSTOMERS, window=window(day))
    state = assert_equals_full_refresh(window(DAY_4))
    metrics = {str(r[0]): r[1:] for r in state["gold.fct_customer_daily_metrics"]}
    # changed, new, updated, total, active at end of day
    assert metrics == {
        DAY_1: (4, 4, 0, 4, 2),
        DAY_2: (3, 1, 2, 5, 2),  # 1 closed, 4 new and active, 3's late record is older: still active
        DAY_3: (4, 1, 3, 6, 4),  # 1 and 2 active again, 5 new and inactive
        DAY_4: (3, 1, 2, 7, 5),  # 4 inactive, 5 and 7 active
    }

    # A backfill of an old day: customer 1's day-2 record is corrected, customer 4's leaves bronze, 8 is new.
    corrected = [r for r in data[DAY_2] if r["customer_id"] not in (1, 4)]
    corrected += [
        customer(1, DAY_2, "2025-01-02T08:00:00", email="c1@example.com", status="inactive", row=1),
        customer(8, DAY_2, "2025-01-02T10:00:00", email="c8@example.com", row=4),
    ]
    write_bronze_partition(lake, DAY_2, corrected)
    dbt("build", *CUSTOMERS, window=window(DAY_2))
    state = assert_equals_full_refresh(window(DAY_2))
    # Customer 4 is now new on day 4, 8 on day 2: both totals of day 4 move, two days after the backfill.
    assert {str(r[0]): r[4:] for r in state["gold.fct_customer_daily_metrics"]}[DAY_4] == (8, 6)

    # The latest day loses records (customer 5 falls back to its day-3 record, 7 is gone), then a two-day
    # window empties day 3 as one run, as a single-run backfill of both partitions does.
    DeltaTable(str(lake / "bronze" / "customers")).delete(f"business_date = '{DAY_4}' and customer_id in (5, 7)")
    dbt("build", *CUSTOMERS, window=window(DAY_4))
    assert_equals_full_refresh(window(DAY_4))
    write_bronze_partition(lake, DAY_3, [])
    dbt("build", *CUSTOMERS, window=window(DAY_3, DAY_4))
    state = assert_equals_full_refresh(window(DAY_3, DAY_4))
    assert [str(r[0]) for r in state["gold.fct_customer_daily_metrics"]] == [DAY_1, DAY_2, DAY_4]


def test_a_run_rewrites_only_what_its_window_changed(lake: Path, dbt: Dbt, warehouse: Connect) -> None:
    data = days()
    for day in (DAY_1, DAY_2, DAY_3):
        write_bronze_partition(lake, day, data[day])
    dbt("build", *CUSTOMERS)  # everything so far, built in full

    def versions(table: str) -> int:
        return DeltaTable(str(lake / "gold" / table)).version()

    write_bronze_partition(lake, DAY_4, data[DAY_4])
    dbt("build", *CUSTOMERS, window=window(DAY_4))
    for table in ("customers_history", "dim_customers", "fct_customer_daily_metrics"):
        [last] = DeltaTable(str(lake / "gold" / table)).history(1)
        assert last["operation"] == "MERGE", f"{table} was not merged: {last['operation']}"
    merged = DeltaTable(str(lake / "gold" / "customers_history")).history(1)[0]["operationMetrics"]
    # Day 4 brings versions of customers 4, 5 (each closing its previous one) and 7: five rows, no more.
    assert merged["num_target_rows_inserted"] + merged["num_target_rows_updated"] == 5
    assert merged["num_target_rows_deleted"] == 0

    # Running the same window again finds nothing changed, and commits nothing.
    tables = ("customers_history", "dim_customers", "fct_customer_daily_metrics")
    before = {t: versions(t) for t in tables}
    silver_before = DeltaTable(str(lake / "silver" / "stg_acme__customers")).version()
    con = warehouse()
    state = dump(con)
    con.close()
    dbt("build", *CUSTOMERS, window=window(DAY_4))
    assert dump(warehouse()) == state
    assert {t: versions(t) for t in tables} == before
    assert DeltaTable(str(lake / "silver" / "stg_acme__customers")).version() == silver_before


def test_a_windowed_run_tests_the_window_and_the_gate_still_checks_every_row(
    lake: Path, dbt: Dbt, workdir: Path
) -> None:
    data = days()
    for day in (DAY_1, DAY_2, DAY_3):
        write_bronze_partition(lake, day, data[day])
    dbt("build", *CUSTOMERS)
    # Customer 1's version delivered on day 1 breaks two rules of dim_customers: a status outside the accepted
    # values, and a second current version of the customer (its day-3 version is current).
    DeltaTable(str(lake / "gold" / "dim_customers")).update(
        predicate=f"customer_id = 1 and _source_business_date = '{DAY_1}'",
        updates={"status": "'bogus'", "is_current": "true"},
    )
    status = "accepted_values_dim_customers_status__active__inactive__closed"
    one_current = "dim_customers_one_current_version_per_customer"

    # A run of day 2 checks the rows delivered on day 2, and every row of the customers it has a version of.
    assert dbt("test", "--select", "dim_customers", window=window(DAY_2), check=False).returncode != 0
    assert failing_tests(workdir) == {one_current: 1}
    assert dbt("test", "--select", "dim_customers", window=window(DAY_1), check=False).returncode != 0
    assert failing_tests(workdir) == {status: 1, one_current: 1}
    assert dbt("test", "--select", "dim_customers", check=False).returncode != 0
    assert failing_tests(workdir) == {status: 1, one_current: 1}

    # The model's gate checks the same rules on every row, whatever the window.
    [gate] = [g for g in model_gates(load_manifest(workdir / "target" / "manifest.json")) if g.model == "dim_customers"]
    result = validate_lake(
        settings.lake(), gate.relation, gate.gate.name, gate.gate.expectations, sample_columns=gate.gate.sample_columns
    )
    assert {(o.expectation, o.column) for o in result.failed} == {
        ("expect_column_values_to_be_in_set", "status"),
        ("exactly one current row per customer_id", None),
    }
