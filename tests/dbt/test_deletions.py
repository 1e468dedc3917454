"""Silver and gold are a pure function of bronze, deletions included: a record removed from a bronze
partition leaves silver and gold with the next run of that partition (the keyed model falls back to the
key's previous record, or deletes the key when none is left), and the gates fail while silver still holds
a key bronze no longer has.

Each chain (customers, payments) is loaded one partition run per day, as Dagster runs it (vars
`min_date`/`max_date`); a test then removes records from one bronze partition and runs that day only.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from dagster_project import settings
from dagster_project.lib.quality.dbt_rules import load_manifest, model_gates
from dagster_project.lib.quality.gx_runner import validate_lake
from tests.dbt.support import Dbt, customer, failing_tests, window, write_bronze_partition

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dbt")]  # dbt builds reusing one parse, on one worker

Connect = Callable[[], duckdb.DuckDBPyConnection]

DAY_1, DAY_2, DAY_3 = "2025-01-01", "2025-01-02", "2025-01-03"
CUSTOMERS = ["--select", "+stg_acme__customers +dim_customers +fct_customer_daily_metrics"]
PAYMENTS = ["--select", "+fct_payments +fct_daily_revenue"]


def rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict]:
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def by_key(con: duckdb.DuckDBPyConnection, table: str, key: str) -> dict[Any, dict]:
    return {r[key]: r for r in rows(con, f"select * from {table}")}


def dump(con: duckdb.DuckDBPyConnection, tables: Sequence[str]) -> dict[str, list[tuple]]:
    return {t: sorted(con.execute(f"select * from {t}").fetchall(), key=repr) for t in tables}


def loaded_once(lake: Path, workdir: Path, name: str, load: Callable[[], None]) -> None:
    """Run `load` once per session; later tests start from a copy of the lake it left."""
    saved = workdir / name
    if saved.exists():
        shutil.copytree(saved / "lake", lake)
        return
    load()
    shutil.copytree(lake, saved / "lake")


# Customers ------------------------------------------------------------------------------------------------


def customer_days() -> dict[str, list[dict]]:
    return {
        DAY_1: [
            customer(1, DAY_1, "2025-01-01T08:00:00", email="one@example.com", row=1),
            customer(2, DAY_1, "2025-01-01T08:00:00", email="two@example.com", row=2),
            customer(3, DAY_1, "2025-01-01T08:00:00", email="three@example.com", row=3),
        ],
        DAY_2: [
            customer(1, DAY_2, "2025-01-02T08:00:00", email="one@example.com", status="closed", row=1),
            customer(2, DAY_2, "2025-01-02T08:00:00", email="two@example.com", status="inactive", row=2),
            customer(4, DAY_2, "2025-01-02T08:00:00", email="four@example.com", row=3),
        ],
        DAY_3: [
            customer(3, DAY_3, "2025-01-03T08:00:00", email="three@example.com", lifetime_value="30.00", row=1),
            customer(5, DAY_3, "2025-01-03T08:00:00", email="five@example.com", row=2),
        ],
    }


@pytest.fixture
def customers_loaded(lake: Path, dbt: Dbt, workdir: Path) -> None:
    def load() -> None:
        for day, day_rows in customer_days().items():
            write_bronze_partition(lake, day, day_rows)
            dbt("build", *CUSTOMERS, window=window(day))

    loaded_once(lake, workdir, "deletions-customers", load)


SILVER_CUSTOMERS = ["silver.stg_acme__customer_versions", "silver.stg_acme__customers"]
GOLD_CUSTOMERS = ["gold.customers_history", "gold.dim_customers", "gold.fct_customer_daily_metrics"]


def test_a_record_removed_from_bronze_falls_back_to_the_previous_one_or_leaves_silver_and_gold(
    lake: Path, customers_loaded: None, dbt: Dbt, warehouse: Connect
) -> None:
    con = warehouse()
    before = by_key(con, "silver.stg_acme__customers", "customer_id")
    assert sorted(before) == [1, 2, 3, 4, 5]
    assert str(before[1]["business_date"]) == DAY_2 and before[1]["status"] == "closed"
    con.close()

    # Customer 1's latest record and customer 4's only one leave bronze (a real Delta delete).
    DeltaTable(str(lake / "bronze" / "customers")).delete(f"business_date = '{DAY_2}' and customer_id in (1, 4)")
    dbt("build", *CUSTOMERS, window=window(DAY_2))

    con = warehouse()
    silver = by_key(con, "silver.stg_acme__customers", "customer_id")
    assert sorted(silver) == [1, 2, 3, 5]
    # Customer 1 is back to its day-1 record, the previous one bronze still has.
    assert (str(silver[1]["business_date"]), silver[1]["status"]) == (DAY_1, "active")
    for untouched in (2, 3, 5):
        assert silver[untouched] == before[untouched]
    assert rows(
        con, "select customer_id, business_date from silver.stg_acme__customer_versions where customer_id in (1, 4)"
    ) == [{"customer_id": 1, "business_date": dt.date(2025, 1, 1)}]

    assert [r["customer_id"] for r in rows(con, "select distinct customer_id from gold.dim_customers order by 1")] == [
        1,
        2,
        3,
        5,
    ]
    assert rows(con, "select status, is_current from gold.dim_customers where customer_id = 1") == [
        {"status": "active", "is_current": True}
    ]
    day_2 = rows(
        con,
        "select customers_changed, customers_new, customers_total_at_end_of_day "
        f"from gold.fct_customer_daily_metrics where business_date = '{DAY_2}'",
    )
    assert day_2 == [{"customers_changed": 1, "customers_new": 0, "customers_total_at_end_of_day": 3}]
    incremental = dump(con, SILVER_CUSTOMERS + GOLD_CUSTOMERS)
    con.close()

    # The partition run left exactly what a rebuild from all of bronze gives.
    dbt("build", "--full-refresh", *CUSTOMERS, window=window(DAY_2))
    assert dump(warehouse(), SILVER_CUSTOMERS + GOLD_CUSTOMERS) == incremental


def test_an_emptied_bronze_partition_empties_silver_of_it(
    lake: Path, customers_loaded: None, dbt: Dbt, warehouse: Connect
) -> None:
    # The bronze hop re-materializes day 2 with nothing in it.
    write_bronze_partition(lake, DAY_2, [])
    dbt("build", *CUSTOMERS, window=window(DAY_2))

    con = warehouse()
    assert rows(con, f"select count(*) as n from silver.stg_acme__customers where business_date = '{DAY_2}'") == [
        {"n": 0}
    ]
    silver = by_key(con, "silver.stg_acme__customers", "customer_id")
    assert sorted(silver) == [1, 2, 3, 5]
    assert {c: (str(silver[c]["business_date"]), silver[c]["status"]) for c in (1, 2)} == {
        1: (DAY_1, "active"),
        2: (DAY_1, "active"),
    }
    assert rows(con, f"select count(*) as n from gold.customers_history where business_date = '{DAY_2}'") == [{"n": 0}]


def test_the_silver_gates_fail_while_silver_holds_a_record_bronze_no_longer_has(
    lake: Path, customers_loaded: None, dbt: Dbt, warehouse: Connect, workdir: Path
) -> None:
    [gate] = [
        g for g in model_gates(load_manifest(workdir / "target" / "manifest.json")) if g.model == "stg_acme__customers"
    ]

    def gx_gate() -> Any:
        return validate_lake(
            settings.lake(),
            gate.relation,
            gate.gate.name,
            gate.gate.expectations,
            sample_columns=gate.gate.sample_columns,
        )

    assert gx_gate().success

    # Bronze loses records, silver is not rebuilt: it is stale.
    DeltaTable(str(lake / "bronze" / "customers")).delete(f"business_date = '{DAY_2}' and customer_id in (1, 4)")

    result = gx_gate()
    assert not result.success
    [failed] = result.failed
    assert failed.expectation == "every customer's record kept here is still in bronze"
    # Customer 4 is gone from bronze; customer 1's record in silver (day 2) is gone, its day-1 one is not.
    assert failed.unexpected_count == 2
    assert sorted(s["customer_id"] for s in failed.sample) == [1, 4]

    tests = ["stg_acme__customers_records_are_in_bronze", "stg_acme__customer_versions_are_in_bronze"]
    assert dbt("test", "--select", *tests, window=window(DAY_2), check=False).returncode != 0
    assert failing_tests(workdir) == {name: 2 for name in tests}

    # The next run of the partition repairs silver, and the gates pass again.
    dbt("build", *CUSTOMERS, window=window(DAY_2))
    assert gx_gate().success


# Payments -------------------------------------------------------------------------------------------------


def payment_event(
    event_id: str,
    event_type: str,
    charge_id: str,
    created_at: str,
    *,
    amount_minor: int,
    amount_refunded_minor: int = 0,
    currency: str = "EUR",
    row: int,
) -> dict[str, Any]:
    """One bronze payment_events row as the webhook hop writes it; `created_at` is an ISO time in UTC."""
    created = dt.datetime.fromisoformat(created_at).replace(tzinfo=dt.UTC)
    return {
        "event_id": event_id,
        "event_type": event_type,
        "event_created_at": created,
        "livemode": False,
        "object_type": "charge",
        "charge_id": charge_id,
        "payout_id": None,
        "amount_minor": amount_minor,
        "amount_refunded_minor": amount_refunded_minor,
        "fee_minor": None,
        "currency": currency,
        "status": "succeeded",
        "is_known_type": True,
        "body": "{}",
        "business_date": created.date(),
        "_source": "stripe",
        "_source_file": f"inbox/stripe/{event_id}",
        "_source_row": row,
        "_checksum_sha256": "0" * 64,
        "_schema_version": 1,
        "_received_at": created,
        "_ingested_at": created,
        "_run_id": "test-run",
    }


def write_payment_events(lake_root: Path, business_date: str, events: Sequence[Mapping[str, Any]]) -> None:
    """Replace one business_date partition of bronze/payment_events, as a bronze re-materialization does."""
    from dagster_project.lib.bronze.contract import bronze_schema
    from dagster_project.lib.sources.registry import SOURCES

    table = pa.Table.from_pylist(list(events), schema=bronze_schema(SOURCES["payment_events"]))
    path = str(lake_root / "bronze" / "payment_events")
    predicate = f"business_date = '{business_date}'" if DeltaTable.is_deltatable(path) else None
    write_deltalake(path, table, mode="overwrite", predicate=predicate, partition_by=["business_date"])


def payment_days() -> dict[str, list[dict]]:
    return {
        DAY_1: [
            payment_event("evt_1", "charge.succeeded", "ch_1", "2025-01-01T09:00:00", amount_minor=5000, row=1),
            payment_event("evt_2", "charge.succeeded", "ch_2", "2025-01-01T10:00:00", amount_minor=1000, row=2),
        ],
        DAY_2: [
            payment_event(
                "evt_3",
                "charge.refunded",
                "ch_1",
                "2025-01-02T09:00:00",
                amount_minor=5000,
                amount_refunded_minor=2000,
                row=3,
            ),
            payment_event("evt_4", "charge.succeeded", "ch_3", "2025-01-02T10:00:00", amount_minor=700, row=4),
        ],
        DAY_3: [
            payment_event("evt_5", "charge.succeeded", "ch_4", "2025-01-03T09:00:00", amount_minor=800, row=5),
        ],
    }


@pytest.fixture
def payments_loaded(lake: Path, dbt: Dbt, workdir: Path) -> None:
    def load() -> None:
        for day, events in payment_days().items():
            write_payment_events(lake, day, events)
            dbt("build", *PAYMENTS, window=window(day))

    loaded_once(lake, workdir, "deletions-payments", load)


SILVER_PAYMENTS = ["silver.stg_psp__payment_events", "silver.stg_psp__charges"]
GOLD_PAYMENTS = ["gold.fct_payments", "gold.fct_daily_revenue"]


def test_an_event_removed_from_bronze_recomputes_its_charge_or_removes_it(
    lake: Path, payments_loaded: None, dbt: Dbt, warehouse: Connect
) -> None:
    con = warehouse()
    before = by_key(con, "silver.stg_psp__charges", "charge_id")
    assert sorted(before) == ["ch_1", "ch_2", "ch_3", "ch_4"]
    assert (before["ch_1"]["charge_status"], before["ch_1"]["refunded_minor"]) == ("partially_refunded", 2000)
    con.close()

    # ch_1's refund and ch_3's only event leave bronze.
    DeltaTable(str(lake / "bronze" / "payment_events")).delete("event_id in ('evt_3', 'evt_4')")
    dbt("build", *PAYMENTS, window=window(DAY_2))

    con = warehouse()
    silver = by_key(con, "silver.stg_psp__charges", "charge_id")
    assert sorted(silver) == ["ch_1", "ch_2", "ch_4"]
    ch_1 = silver["ch_1"]
    assert (ch_1["charge_status"], ch_1["refunded_minor"], ch_1["events_count"]) == ("captured", 0, 1)
    assert ch_1["refunded_at"] is None
    assert str(ch_1["last_business_date"]) == DAY_1
    for untouched in ("ch_2", "ch_4"):
        assert silver[untouched] == before[untouched]

    gold = by_key(con, "gold.fct_payments", "charge_id")
    assert sorted(gold) == ["ch_1", "ch_2", "ch_4"]
    assert (gold["ch_1"]["refunded_minor"], gold["ch_1"]["net_captured_minor"]) == (0, 5000)
    revenue = rows(
        con,
        "select cast(revenue_date as varchar) as day, refunded_minor, net_revenue_minor "
        "from gold.fct_daily_revenue order by 1",
    )
    assert revenue == [
        {"day": DAY_1, "refunded_minor": 0, "net_revenue_minor": 6000},
        {"day": DAY_3, "refunded_minor": 0, "net_revenue_minor": 800},
    ]
    incremental = dump(con, SILVER_PAYMENTS + GOLD_PAYMENTS)
    con.close()

    dbt("build", "--full-refresh", *PAYMENTS, window=window(DAY_2))
    assert dump(warehouse(), SILVER_PAYMENTS + GOLD_PAYMENTS) == incremental


def test_the_payments_tests_fail_while_silver_holds_a_charge_bronze_no_longer_has(
    lake: Path, payments_loaded: None, dbt: Dbt, workdir: Path
) -> None:
    tests = ["stg_psp__charges_are_in_bronze", "stg_psp__payment_events_are_in_bronze"]
    check = ["test", "--select", *tests]
    assert dbt(*check, window=window(DAY_2), check=False).returncode == 0

    write_payment_events(lake, DAY_2, [e for e in payment_days()[DAY_2] if e["charge_id"] != "ch_3"])

    assert dbt(*check, window=window(DAY_2), check=False).returncode != 0
    assert failing_tests(workdir) == {name: 1 for name in tests}

    dbt("build", *PAYMENTS, window=window(DAY_2))
    assert dbt(*check, window=window(DAY_2), check=False).returncode == 0
