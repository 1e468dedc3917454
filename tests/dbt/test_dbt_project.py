"""The dbt project against a real bronze Delta table: silver dedup and pseudonymisation, gold SCD2 and
daily metrics, idempotent partition runs and safe backfills.

dbt runs as a subprocess, as it does under Dagster; silver and gold are Delta tables in the lake, which the
tests read in place, as dbt does.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from dagster_project import settings
from dagster_project.lib.dbt_plugins.run_file import write_run
from dagster_project.lib.masking import pii_token
from tests.dbt.support import PII_KEY, Dbt, customer, dbt_command, window, write_bronze_partition

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dbt")]  # dbt builds reusing one parse, on one worker

Connect = Callable[[], duckdb.DuckDBPyConnection]

DAY_1 = "2025-01-01"
DAY_2 = "2025-01-02"
HEX_64 = re.compile(r"[0-9a-f]{64}")

# Raw PII the fixtures send; none of it may appear anywhere in silver or gold, in any casing.
RAW_PII = [
    "ada.lovelace@example.com",
    "ada.lovelace",
    "bob@example.org",
    "cy@example.net",
    "dee@example.io",
    "lovelace",
    "babbage",
    "charles",
    "cyril",
]


# The slice of the project these tests are about: bronze customers to the gold customer models. Building
# only it (not the payments and shop models) keeps every run short.
CUSTOMERS = ["--select", "+stg_acme__customers +dim_customers +fct_customer_daily_metrics"]


def day_1_rows() -> list[dict]:
    return [
        # Same customer twice in one day: the later change (row 2) wins.
        customer(1, DAY_1, "2025-01-01T08:00:00", email=" Ada.Lovelace@Example.COM ", row=1),
        customer(
            1,
            DAY_1,
            "2025-01-01T09:00:00",
            email="ada.lovelace@example.com",
            status="inactive",
            lifetime_value="12.50",
            row=2,
        ),
        customer(2, DAY_1, "2025-01-01T08:00:00", email="bob@example.org", first_name=None, last_name="Babbage", row=3),
        # Same customer, same updated_at: the later line of the file wins.
        customer(
            3, DAY_1, "2025-01-01T07:00:00", email="charles@example.com", first_name="Charles", country_code="FR", row=4
        ),
        customer(
            3, DAY_1, "2025-01-01T07:00:00", email="charles@example.com", first_name="Charles", country_code="DE", row=5
        ),
        customer(4, DAY_1, "2025-01-01T10:00:00", email=" Cy@Example.NET ", first_name="Cyril", row=6),
    ]


def day_2_rows() -> list[dict]:
    return [
        customer(
            1,
            DAY_2,
            "2025-01-02T08:00:00",
            email="ada.lovelace@example.com",
            status="closed",
            lifetime_value="15.00",
            row=1,
        ),
        customer(4, DAY_2, "2025-01-02T09:30:00", email="cy@example.net", first_name="Cyril", status="inactive", row=2),
        customer(5, DAY_2, "2025-01-02T11:00:00", email="dee@example.io", first_name=None, last_name=None, row=3),
    ]


def rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict]:
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def silver_by_id(con: duckdb.DuckDBPyConnection) -> dict[int, dict]:
    return {r["customer_id"]: r for r in rows(con, "select * from silver.stg_acme__customers")}


def table_dump(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
    """Every silver/gold table, sorted, for before/after comparisons."""
    tables = con.execute(
        "select table_schema || '.' || table_name from information_schema.tables "
        "where table_schema in ('silver', 'gold') order by 1"
    ).fetchall()
    return {t: sorted(con.execute(f"select * from {t}").fetchall(), key=repr) for (t,) in tables}


@pytest.fixture
def two_days_loaded(lake: Path, dbt: Dbt, workdir: Path) -> None:
    """Bronze with days 1 and 2, each built as its own partition run.

    Built once per session; later tests start from a copy of the lake it left.
    """
    saved = workdir / "two-days"
    if saved.exists():
        shutil.copytree(saved / "lake", lake)
        return
    write_bronze_partition(lake, DAY_1, day_1_rows())
    # Run by hand: the lake from MEDALLION_LAKE_ROOT and the window as vars, where Dagster writes a run file.
    dbt("build", *CUSTOMERS, "--vars", json.dumps({"min_date": DAY_1, "max_date": DAY_1}), by_hand=True)
    write_bronze_partition(lake, DAY_2, day_2_rows())
    dbt("build", *CUSTOMERS, window=window(DAY_2))
    shutil.copytree(lake, saved / "lake")


def test_silver_keeps_the_latest_record_per_customer(two_days_loaded: None, warehouse: Connect) -> None:
    con = warehouse()
    silver = silver_by_id(con)

    assert sorted(silver) == [1, 2, 3, 4, 5]
    assert silver[1]["status"] == "closed"
    assert silver[1]["lifetime_value"] == Decimal("15.00")
    assert str(silver[1]["updated_at"]) == "2025-01-02 08:00:00+00:00"
    assert str(silver[1]["business_date"]) == DAY_2
    assert silver[3]["country_code"] == "DE"
    assert silver[1]["email_domain"] == "example.com"
    assert silver[2]["first_name_token"] is None
    assert silver[2]["last_name_token"] == pii_token("Babbage", PII_KEY.encode())
    # Customer 1 came twice on day 1: that day keeps the later change.
    day_1 = rows(
        con,
        "select status, lifetime_value from silver.stg_acme__customer_versions "
        "where customer_id = 1 and business_date = '2025-01-01'",
    )
    assert day_1 == [{"status": "inactive", "lifetime_value": Decimal("12.50")}]


def test_silver_types(two_days_loaded: None, warehouse: Connect) -> None:
    types = dict(
        warehouse()
        .execute(
            "select column_name, data_type from information_schema.columns "
            "where table_schema = 'silver' and table_name = 'stg_acme__customers'"
        )
        .fetchall()
    )

    assert types["lifetime_value"] == "DECIMAL(12,2)"
    assert types["updated_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["business_date"] == "DATE"
    assert not {"email", "first_name", "last_name"} & set(types)


def test_tokens_are_keyed_hex_and_stable_across_case_and_whitespace(two_days_loaded: None, warehouse: Connect) -> None:
    con = warehouse()
    tokens = rows(
        con,
        "select customer_id, business_date, email_token from silver.stg_acme__customer_versions "
        "where customer_id = 4 order by business_date",
    )

    # Day 1 sent " Cy@Example.NET ", day 2 "cy@example.net": one person, one token.
    assert len(tokens) == 2
    assert tokens[0]["email_token"] == tokens[1]["email_token"] == pii_token("cy@example.net", PII_KEY.encode())
    for row in rows(con, "select email_token, first_name_token, last_name_token from silver.stg_acme__customers"):
        for token in row.values():
            assert token is None or HEX_64.fullmatch(token)


def test_no_raw_pii_in_silver_or_gold_and_no_database_file_anywhere(
    two_days_loaded: None, warehouse: Connect, workdir: Path
) -> None:
    con = warehouse()
    tables = [
        t
        for (t,) in con.execute(
            "select table_schema || '.' || table_name from information_schema.tables "
            "where table_schema in ('silver', 'gold')"
        ).fetchall()
    ]
    assert len(tables) >= 4

    # dbt computes in memory: no DuckDB file holds a copy of bronze (or anything else) after its runs.
    assert [p for p in workdir.rglob("*") if p.suffix in (".duckdb", ".wal") or p.name.endswith(".duckdb.wal")] == []
    for table in tables:
        for row in con.execute(f"select * from {table}").fetchall():
            for value in row:
                text = str(value).lower()
                leaked = [pii for pii in RAW_PII if pii in text]
                assert not leaked, f"raw PII {leaked} in {table}"


def test_gold_scd2_history_after_a_second_day(two_days_loaded: None, warehouse: Connect) -> None:
    con = warehouse()

    assert (
        rows(
            con,
            "select customer_id, count(*) as n from gold.dim_customers where is_current "
            "group by 1 having count(*) <> 1",
        )
        == []
    )
    assert [r["customer_id"] for r in rows(con, "select distinct customer_id from gold.dim_customers order by 1")] == [
        1,
        2,
        3,
        4,
        5,
    ]
    history = rows(
        con,
        "select status, lifetime_value, cast(valid_from as varchar) as valid_from, "
        "cast(valid_to as varchar) as valid_to, is_current "
        "from gold.dim_customers where customer_id = 1 order by valid_from",
    )
    assert history == [
        {
            "status": "inactive",
            "lifetime_value": Decimal("12.50"),
            "valid_from": "2025-01-01 09:00:00+00",
            "valid_to": "2025-01-02 08:00:00+00",
            "is_current": False,
        },
        {
            "status": "closed",
            "lifetime_value": Decimal("15.00"),
            "valid_from": "2025-01-02 08:00:00+00",
            "valid_to": None,
            "is_current": True,
        },
    ]


def test_daily_metrics(two_days_loaded: None, warehouse: Connect) -> None:
    metrics = rows(warehouse(), "select * from gold.fct_customer_daily_metrics order by business_date")

    assert [
        (
            str(m["business_date"]),
            m["customers_changed"],
            m["customers_new"],
            m["customers_updated"],
            m["customers_total_at_end_of_day"],
            m["customers_active_at_end_of_day"],
        )
        for m in metrics
    ] == [
        # day 1: 1 inactive, 2, 3, 4 active
        (DAY_1, 4, 4, 0, 4, 3),
        # day 2: 1 closed, 4 inactive, 5 new and active -> 2, 3, 5 active
        (DAY_2, 3, 1, 2, 5, 3),
    ]


def test_rerunning_the_same_window_changes_nothing(two_days_loaded: None, dbt: Dbt, warehouse: Connect) -> None:
    con = warehouse()
    before = table_dump(con)
    con.close()

    dbt("build", *CUSTOMERS, window=window(DAY_2))

    assert table_dump(warehouse()) == before


def test_backfilling_an_old_day_never_overwrites_newer_records(
    lake: Path, two_days_loaded: None, dbt: Dbt, warehouse: Connect
) -> None:
    # Day 1 is re-delivered: customer 1 with an older change than its day-2 record, customer 2 corrected.
    redelivered = [r for r in day_1_rows() if r["customer_id"] != 2]
    redelivered[1] = customer(
        1,
        DAY_1,
        "2025-01-01T09:00:00",
        email="ada.lovelace@example.com",
        status="active",
        lifetime_value="99.00",
        row=2,
    )
    redelivered.append(
        customer(
            2,
            DAY_1,
            "2025-01-01T08:00:00",
            email="bob@example.org",
            first_name=None,
            last_name="Babbage",
            lifetime_value="42.00",
            row=3,
        )
    )
    write_bronze_partition(lake, DAY_1, redelivered)

    dbt("build", *CUSTOMERS, window=window(DAY_1))

    con = warehouse()
    silver = silver_by_id(con)
    assert silver[1]["status"] == "closed"
    assert silver[1]["lifetime_value"] == Decimal("15.00")
    assert silver[2]["lifetime_value"] == Decimal("42.00")
    assert rows(
        con, "select count(*) as n from silver.stg_acme__customer_versions where business_date = '2025-01-01'"
    ) == [{"n": 4}]
    current = rows(con, "select status from gold.dim_customers where customer_id = 1 and is_current")
    assert current == [{"status": "closed"}]


def test_incremental_runs_match_a_full_refresh(two_days_loaded: None, dbt: Dbt, warehouse: Connect) -> None:
    con = warehouse()
    incremental = {t: v for t, v in table_dump(con).items() if t.startswith("silver.")}
    con.close()

    dbt("build", "--full-refresh", "--select", "path:models/staging,+stg_acme__customers")

    rebuilt = {t: v for t, v in table_dump(warehouse()).items() if t.startswith("silver.")}
    assert rebuilt == incremental


def test_missing_key_fails_clearly_and_the_key_is_never_written(
    two_days_loaded: None, dbt: Dbt, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifacts = [p for p in (workdir / "target").rglob("*") if p.is_file()]
    artifacts += [p for p in (workdir / "logs").rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in artifacts)
    assert not [p for p in artifacts if PII_KEY.encode() in p.read_bytes()]

    monkeypatch.delenv("MEDALLION_PII_HMAC_KEY")
    result = dbt("build", *CUSTOMERS, window=window(DAY_1), check=False)

    assert result.returncode != 0
    assert "MEDALLION_PII_HMAC_KEY is not set" in result.stdout


def test_window_vars_are_validated(two_days_loaded: None, dbt: Dbt) -> None:
    only_min = json.dumps({"min_date": DAY_1})
    result = dbt("compile", "--select", "stg_acme__customer_versions", "--vars", only_min, by_hand=True, check=False)

    assert result.returncode != 0
    assert "min_date and max_date must be given together" in result.stdout


def test_an_open_analyst_session_never_blocks_a_run_and_sees_its_result(
    two_days_loaded: None, dbt: Dbt, lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dagster_project.cli import main

    catalog = tmp_path / "catalog.duckdb"
    assert main(["catalog", "--out", str(catalog)]) == 0
    # The analyst holds the catalog open for writing: the strongest lock a DuckDB file can take.
    analyst = duckdb.connect(str(catalog))
    loads = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("LOAD ")]
    assert loads  # the lines the catalog prints for a session to run first
    for statement in loads:
        analyst.execute(statement)
    assert analyst.execute("select count(*) from silver.stg_acme__customers").fetchone() == (5,)

    write_bronze_partition(
        lake, DAY_2, [*day_2_rows(), customer(6, DAY_2, "2025-01-02T12:00:00", email="eve@example.com")]
    )
    dbt("build", *CUSTOMERS, window=window(DAY_2))

    assert analyst.execute("select count(*) from silver.stg_acme__customers").fetchone() == (6,)
    analyst.close()


def test_a_killed_dbt_run_leaves_no_raw_pii_outside_bronze(lake: Path, dbt: Dbt, workdir: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import time

    emails = [f"killed-run-{i}@example.com" for i in range(50_000)]
    write_bronze_partition(
        lake, DAY_1, [customer(i, DAY_1, "2025-01-01T08:00:00", email=e, row=i) for i, e in enumerate(emails)]
    )
    log = workdir / "logs" / "dbt.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # where the run's DuckDB may spill
    write_run(workdir / "target", str(lake))  # as Dagster starts it, on the lake of the test
    run = subprocess.Popen(
        dbt_command(workdir, "build", *CUSTOMERS),
        cwd=settings.dbt_project_dir(),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while "START sql" not in log.read_text() and run.poll() is None:
        assert time.monotonic() < deadline, "dbt never started a model"
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL, "dbt finished before it could be killed mid-run"

    # No database file anywhere: compute was in memory and died with the process.
    searched = [workdir, settings.dbt_project_dir(), tmp_path]
    files = [p for root in searched for p in root.rglob("*") if p.is_file() and "bronze" not in p.parts]
    assert not [p for p in files if p.suffix in (".duckdb", ".wal", ".tmp", ".block")]
    needles = [e.encode() for e in emails[::5_000]]
    leaked = [p for p in files if any(n in p.read_bytes() for n in needles)]
    assert leaked == []
