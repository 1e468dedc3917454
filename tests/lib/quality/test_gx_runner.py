"""GX suites on DuckDB give the same counts as hand-written SQL, report failures without raw PII, and gate."""

from __future__ import annotations

import datetime as dt

import duckdb
import great_expectations.expectations as gxe
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from dagster_project.lib.quality import gates, gx_duckdb
from dagster_project.lib.quality.gx_runner import GateResult, validate_delta, validate_duckdb, validate_duckdb_file

ROWS = 200_000
PLANTED_EMAIL = "planted.victim@example.com"

# Planted defects, each on a known set of rows.
PEOPLE_SQL = """
create table people as
select
  case when i % 1000 = 7 then null else i end as customer_id,
  case when i = 4242 then ? when i % 500 = 3 then 'not-an-email-' || i else 'user' || i || '@mail.example.com' end
    as email,
  case when i % 250 = 11 then 'C' || i else 'C' || lpad(cast(i % 100000 as varchar), 6, '0') end as code,
  case when i % 400 = 5 then 'deleted' else ['active', 'inactive', 'closed'][1 + i % 3] end as status,
  case when i % 2000 = 9 then 5 else i end as account_no
from range(1, ? + 1) as t(i)
"""


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(PEOPLE_SQL, [PLANTED_EMAIL, ROWS])
    yield con
    con.close()


def _truth(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    return con.execute(sql).fetchone()[0]


PEOPLE_EXPECTATIONS = [
    gxe.ExpectColumnValuesToNotBeNull(column="customer_id"),
    gxe.ExpectColumnValuesToMatchRegex(column="email", regex=r"^[\w.]+@[\w-]+(\.[\w-]+)+$"),
    gxe.ExpectColumnValuesToMatchRegex(column="code", regex=r"^C\d{6}$"),
    gxe.ExpectColumnValuesToBeInSet(column="status", value_set=["active", "inactive", "closed"]),
    gxe.ExpectColumnValuesToBeUnique(column="account_no"),
    gxe.UnexpectedRowsExpectation(
        description="every row has a customer_id",
        unexpected_rows_query="select * from {batch} where customer_id is null",
    ),
]
TRUTH_SQL = [
    "select count(*) from people where customer_id is null",
    r"select count(*) from people where not regexp_matches(email, '^[\w.]+@[\w-]+(\.[\w-]+)+$')",
    r"select count(*) from people where not regexp_matches(code, '^C\d{6}$')",
    "select count(*) from people where status not in ('active', 'inactive', 'closed')",
    "select count(*) from people where account_no in (select account_no from people group by 1 having count(*) > 1)",
    "select count(*) from people where customer_id is null",
]


def test_counts_equal_hand_computed_truth(con):
    result = validate_duckdb(con, "people", "people", PEOPLE_EXPECTATIONS, sample_columns=["customer_id"])

    truths = [_truth(con, sql) for sql in TRUTH_SQL]
    assert all(t > 0 for t in truths), "every planted defect must be present"
    assert [o.unexpected_count for o in result.outcomes] == truths
    assert [o.element_count for o in result.outcomes[:5]] == [ROWS] * 5
    assert not result.success
    assert len(result.failed) == len(PEOPLE_EXPECTATIONS)


def test_unexpected_rows_count_and_sample_beyond_the_fetched_rows(con):
    # More failing rows than GX fetches (200): the count must still be exact, and the sample comes from them.
    query = "select customer_id, status from {batch} where status = 'deleted'"
    truth = _truth(con, "select count(*) from people where status = 'deleted'")
    assert truth > 200
    check = gxe.UnexpectedRowsExpectation(description="no deleted rows", unexpected_rows_query=query)
    result = validate_duckdb(con, "people", "deleted", [check], sample_columns=["customer_id"])
    assert result.outcomes[0].unexpected_count == truth
    deleted = {r[0] for r in con.execute("select customer_id from people where status = 'deleted'").fetchall()}
    assert 0 < len(result.outcomes[0].sample) <= 5
    assert {row["customer_id"] for row in result.outcomes[0].sample} <= deleted
    # The same query again on changed data is counted afresh, not answered from an earlier run.
    con.execute("create temp table people_copy as select * replace ('active' as status) from people")
    again = validate_duckdb(con, "people_copy", "deleted", [check])
    con.execute("drop table people_copy")
    assert again.success and again.outcomes[0].unexpected_count == 0


def test_regex_with_backslash_classes_is_passed_to_duckdb_intact(con):
    # \d{6} would match nothing (or error) if the backslash were doubled on the way to DuckDB.
    result = validate_duckdb(
        con, "people", "codes", [gxe.ExpectColumnValuesToMatchRegex(column="code", regex=r"^C\d{6}$")]
    )
    assert result.outcomes[0].unexpected_count == _truth(con, TRUTH_SQL[2])
    assert 0 < result.outcomes[0].unexpected_count < ROWS / 100


def test_passing_suite_passes(con):
    result = validate_duckdb(
        con,
        "people",
        "clean",
        [
            gxe.ExpectColumnValuesToNotBeNull(column="email"),
            gxe.ExpectColumnValuesToMatchRegex(column="email", regex=r"\S"),
            gxe.ExpectTableRowCountToEqual(value=ROWS),
            gxe.UnexpectedRowsExpectation(unexpected_rows_query="select * from {batch} where code is null"),
        ],
    )
    assert result.success, result.summary()
    assert result.failed == []
    assert [o.unexpected_count for o in result.outcomes] == [0, 0, None, 0]
    assert result.outcomes[2].observed == ROWS
    assert "4/4 expectations passed" in result.summary()


def test_failure_names_expectation_and_count_and_sample_has_no_pii(con):
    result = validate_duckdb(con, "people", "people", PEOPLE_EXPECTATIONS, sample_columns=["customer_id"])

    email = result.outcomes[1]
    assert (email.expectation, email.column, email.success) == ("expect_column_values_to_match_regex", "email", False)
    assert email.unexpected_count == _truth(con, TRUTH_SQL[1])
    assert 0 < len(email.sample) <= 5
    assert all(set(row) == {"customer_id"} for row in email.sample)
    flagged = [row["customer_id"] for row in email.sample]
    bad_ids = {r[0] for r in con.execute(TRUTH_SQL[1].replace("count(*)", "customer_id")).fetchall()}
    assert set(flagged) <= bad_ids

    rows_check = result.outcomes[5]
    assert rows_check.expectation == "every row has a customer_id"
    assert rows_check.sample and all(set(r) == {"customer_id"} for r in rows_check.sample)

    assert "expect_column_values_to_match_regex(email)" in result.summary()
    assert PLANTED_EMAIL not in repr(result)
    assert PLANTED_EMAIL not in result.summary()


def test_without_sample_columns_pii_values_are_withheld(con):
    # Only the planted row breaks this rule, so a values sample would be exactly the raw email.
    only_planted = [
        gxe.ExpectColumnValuesToNotBeInSet(column="email", value_set=[PLANTED_EMAIL]),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=["active", "inactive", "closed"]),
    ]
    result = validate_duckdb(con, "people", "pii", only_planted)
    assert result.outcomes[0].unexpected_count == 1
    assert result.outcomes[0].sample == []
    assert PLANTED_EMAIL not in repr(result)
    assert result.outcomes[1].sample == ["deleted"] * 5  # not PII: the values themselves


def test_a_broken_expectation_fails_with_a_message_and_no_data(con):
    result = validate_duckdb(con, "people", "broken", [gxe.ExpectColumnValuesToNotBeNull(column="no_such_column")])
    assert not result.success
    assert str(result.outcomes[0].observed).startswith("error:")


def test_connection_stays_usable(con):
    validate_duckdb(con, "people", "people", PEOPLE_EXPECTATIONS[:1])
    assert con.execute("select count(*) from people").fetchone()[0] == ROWS


def test_patch_is_idempotent_and_duckdb_only():
    from great_expectations.execution_engine import SqlAlchemyExecutionEngine
    from great_expectations.expectations.metrics import util

    gx_duckdb.ensure_patched()
    patched = SqlAlchemyExecutionEngine.execute_query
    gx_duckdb.ensure_patched()
    assert SqlAlchemyExecutionEngine.execute_query is patched

    import sqlalchemy as sa
    from sqlalchemy.dialects import sqlite

    expr = util.get_dialect_regex_expression(sa.column("x"), "a", sqlite)
    assert "regexp_matches" not in str(expr.compile(dialect=sqlite.dialect()))


def test_validate_delta_reads_one_partition(tmp_path):
    table = pa.table(
        {
            "customer_id": pa.array([1, 2, 3, 4, 4], pa.int64()),
            "status": ["active", "closed", "bogus", "active", "active"],
            "business_date": pa.array(
                [dt.date(2025, 11, 4)] * 3 + [dt.date(2025, 11, 5)] * 2,
                pa.date32(),
            ),
        }
    )
    write_deltalake(tmp_path / "t", table, partition_by=["business_date"])
    suite = [
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=["active", "closed"]),
        gxe.ExpectColumnValuesToBeUnique(column="customer_id"),
    ]

    day4 = validate_delta(tmp_path / "t", "d4", suite, predicate_sql="business_date = ?", params=[dt.date(2025, 11, 4)])
    day5 = validate_delta(tmp_path / "t", "d5", suite, predicate_sql="business_date = ?", params=[dt.date(2025, 11, 5)])

    assert [o.element_count for o in day4.outcomes] == [3, 3]
    assert [o.unexpected_count for o in day4.outcomes] == [1, 0]
    assert [o.unexpected_count for o in day5.outcomes] == [0, 2]
    assert isinstance(day5, GateResult) and not day5.success


def test_validate_duckdb_file_is_read_only(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as c:
        c.execute("create schema silver; create table silver.t as select range as id from range(10)")
    result = validate_duckdb_file(path, "silver.t", "t", [gxe.ExpectColumnValuesToBeUnique(column="id")])
    assert result.success
    assert result.outcomes[0].element_count == 10


# --- the customer gates -------------------------------------------------------------------------------

SILVER_SQL = """
create schema if not exists silver;
create or replace table silver.stg_acme__customers as
select
  i::bigint as customer_id,
  sha256('customer' || i || '@mail.example.com') as email_token,
  'mail.example.com' as email_domain,
  sha256('First' || i) as first_name_token,
  sha256('Last' || i) as last_name_token,
  'DE' as country_code,
  date '2024-01-01' as signup_date,
  12.50::decimal(12, 2) as lifetime_value,
  ['active', 'inactive', 'closed'][1 + i % 3] as status,
  timestamptz '2025-11-05 10:00:00+00' as updated_at,
  date '2025-11-05' as business_date,
  'acme_customers_2025-11-05_seq-00001_crc32-1A2B3C4D.csv' as _source_file
from range(1, 1001) as t(i)
"""

GOLD_SQL = """
create schema if not exists gold;
create or replace table gold.dim_customers as
select
  md5(customer_id || '|' || version) as customer_sk,
  customer_id,
  sha256('customer' || customer_id) as email_token,
  'mail.example.com' as email_domain,
  'DE' as country_code,
  'active' as status,
  date '2024-01-01' as signup_date,
  1.00::decimal(12, 2) as lifetime_value,
  timestamptz '2025-01-01 00:00:00+00' + to_days(version * 30) as valid_from,
  case when version = 1 then timestamptz '2025-01-01 00:00:00+00' + to_days(60) end as valid_to,
  version = 2 as is_current
from range(1, 501) as c(customer_id), range(1, 3) as v(version)
"""


def _gate(con: duckdb.DuckDBPyConnection, gate: gates.Gate, relation: str) -> tuple[GateResult, list[int]]:
    result = validate_duckdb(con, relation, gate.name, gate.expectations, sample_columns=list(gate.sample_columns))
    counts = [v for sql in gate.sql_for(relation) for v in con.execute(sql).fetchone()]
    assert result.success == (not any(counts)), (result.summary(), counts)
    return result, counts


def _failed(result: GateResult) -> set[str]:
    return {f"{o.expectation}({o.column})" if o.column else o.expectation for o in result.failed}


def _bronze_rows(n: int) -> pa.Table:
    from dagster_project.lib.bronze.contract import bronze_schema
    from dagster_project.lib.sources.registry import CUSTOMERS

    con = duckdb.connect()
    table = con.sql(
        """
        select i as customer_id, 'u' || i || '@x.example' as email, 'F' as first_name, 'L' as last_name,
          'DE' as country_code, date '2024-01-01' as signup_date, 1.00::decimal(12, 2) as lifetime_value,
          ['active', 'inactive', 'closed'][1 + i % 3] as status, timestamptz '2025-11-05 10:00:00+00' as updated_at,
          date '2025-11-05' as business_date, 'sftp' as _source, 'f.csv' as _source_file, i as _source_row,
          repeat('a', 64) as _checksum_sha256, 1 as _schema_version,
          timestamptz '2025-11-05 06:00:00+00' as _received_at, timestamptz '2025-11-05 06:01:00+00' as _ingested_at,
          'run-1' as _run_id
        from range(1, ? + 1) as t(i)
        """,
        params=[n],
    ).to_arrow_table()
    return table.cast(bronze_schema(CUSTOMERS))


def test_bronze_gate_passes_clean_partition_and_fails_broken_one(tmp_path):
    clean = _bronze_rows(300)
    write_deltalake(tmp_path / "bronze", clean, partition_by=["business_date"])
    gate = gates.bronze_customers(expected_rows=300)
    ok = validate_delta(
        tmp_path / "bronze",
        gate.name,
        gate.expectations,
        predicate_sql="business_date = ?",
        params=[dt.date(2025, 11, 5)],
        sample_columns=gate.sample_columns,
    )
    assert ok.success, ok.summary()

    con = duckdb.connect()
    con.register("clean", clean)
    con.execute(
        "create table broken as select * replace ("
        " case when _source_row = 7 then 'deleted' else status end as status,"
        " case when _source_row = 8 then null else _run_id end as _run_id) from clean"
    )
    result, counts = _gate(con, gates.bronze_customers(expected_rows=299), "broken")
    assert _failed(result) == {
        "expect_column_values_to_be_in_set(status)",
        "expect_column_values_to_not_be_null(_run_id)",
        "expect_table_row_count_to_equal",
    }
    assert sum(counts) == 3

    con.execute("create table narrow as select * exclude (_checksum_sha256) from clean")
    gate = gates.bronze_customers(expected_rows=300)
    result = validate_duckdb(con, "narrow", gate.name, gate.expectations)
    assert _failed(result) == {
        "expect_table_columns_to_match_set",
        "expect_column_values_to_not_be_null(_checksum_sha256)",
    }
    columns = next(o for o in result.failed if o.expectation == "expect_table_columns_to_match_set")
    assert columns.observed == {"missing": ["_checksum_sha256"]}


def test_silver_gate_passes_clean_table_and_fails_on_duplicate_key():
    con = duckdb.connect()
    con.execute(SILVER_SQL)
    result, _ = _gate(con, gates.silver_customers(), "silver.stg_acme__customers")
    assert result.success, result.summary()

    con.execute(
        "insert into silver.stg_acme__customers select * replace ('Active' as status) "
        "from silver.stg_acme__customers where customer_id = 42"
    )
    con.execute("update silver.stg_acme__customers set email_token = upper(email_token) where customer_id = 43")
    result, _ = _gate(con, gates.silver_customers(), "silver.stg_acme__customers")
    assert _failed(result) == {
        "expect_column_values_to_be_unique(customer_id)",
        "expect_column_values_to_be_in_set(status)",
        "expect_column_values_to_match_regex(email_token)",
    }
    unique = next(o for o in result.outcomes if o.expectation == "expect_column_values_to_be_unique")
    assert unique.unexpected_count == 2
    assert {row["customer_id"] for row in unique.sample} == {42}


def test_gold_gate_passes_clean_scd2_and_fails_on_broken_history():
    con = duckdb.connect()
    con.execute(GOLD_SQL)
    result, _ = _gate(con, gates.gold_dim_customers(), "gold.dim_customers")
    assert result.success, result.summary()

    one_current = "exactly one current row per customer_id"
    overlapping = "no overlapping validity ranges per customer_id"

    # Two current rows for customer 7: its old version was never closed.
    con.execute("update gold.dim_customers set valid_to = null, is_current = true where customer_id = 7")
    result, _ = _gate(con, gates.gold_dim_customers(), "gold.dim_customers")
    assert _failed(result) == {one_current, overlapping}
    current = next(o for o in result.outcomes if o.expectation == one_current)
    assert current.unexpected_count == 1
    assert current.sample == [{"customer_id": 7}]

    # Overlap only: customer 8's old version ends after its new one starts.
    con.execute(GOLD_SQL)
    con.execute(
        "update gold.dim_customers set valid_to = valid_to + interval 40 days where customer_id = 8 and not is_current"
    )
    result, _ = _gate(con, gates.gold_dim_customers(), "gold.dim_customers")
    assert _failed(result) == {overlapping}

    # Duplicate surrogate key and a version that ends before it starts.
    con.execute(GOLD_SQL)
    con.execute(
        "update gold.dim_customers set customer_sk = (select customer_sk from gold.dim_customers "
        "where customer_id = 1 and is_current) where customer_id = 2 and is_current"
    )
    con.execute(
        "update gold.dim_customers set valid_to = valid_from - interval 1 day where customer_id = 3 and not is_current"
    )
    result, _ = _gate(con, gates.gold_dim_customers(), "gold.dim_customers")
    assert _failed(result) == {
        "expect_column_values_to_be_unique(customer_sk)",
        "expect_column_pair_values_a_to_be_greater_than_b",
    }
