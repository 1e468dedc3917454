"""Each layer's gate, derived from its declaration, passes clean data and fails crafted bad data: naming
the broken rule, counting the rows that break it, and sampling only keys and tokens."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from dagster_project import settings
from dagster_project.lib.lake import Lake
from dagster_project.lib.quality import dbt_rules, gates, rules
from dagster_project.lib.quality.gx_runner import GateResult, validate_duckdb, validate_lake
from dagster_project.lib.sources.registry import CUSTOMERS


@pytest.fixture(scope="module")
def model_gates() -> dict[str, dbt_rules.ModelGate]:
    path = settings.dbt_project_dir() / "target" / "manifest.json"
    assert path.exists(), f"no dbt manifest at {path}: run `make install` (it runs `dbt parse`)"
    return {g.model: g for g in dbt_rules.model_gates(dbt_rules.load_manifest(path))}


def _run(con: duckdb.DuckDBPyConnection, gate: gates.Gate, relation: str) -> GateResult:
    return validate_duckdb(con, relation, gate.name, gate.expectations, sample_columns=list(gate.sample_columns))


def _failed(result: GateResult) -> dict[str, int | None]:
    return {f"{o.expectation}({o.column})" if o.column else o.expectation: o.unexpected_count for o in result.failed}


def test_the_yaml_declares_the_gated_models(model_gates):
    assert sorted(model_gates) == ["customer_segments", "dim_customers", "payout_reconciliation", "stg_acme__customers"]
    assert {g.relation for g in model_gates.values()} == {
        "silver.stg_acme__customers",
        "gold.dim_customers",
        "gold.payout_reconciliation",
        "gold.customer_segments",
    }


# --- bronze -------------------------------------------------------------------------------------------


def _bronze_rows(n: int) -> pa.Table:
    from dagster_project.lib.bronze.contract import bronze_schema

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
    lake = Lake.parse(str(tmp_path / "lake"))
    write_deltalake(lake.table("bronze", "customers"), clean, partition_by=["business_date"])
    gate = gates.bronze_gate(CUSTOMERS, expected_rows=300)
    ok = validate_lake(
        lake,
        "bronze.customers",
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
        " case when _source_row = 8 then null else _run_id end as _run_id,"
        " case when _source_row = 9 then 'Germany' else country_code end as country_code,"
        " case when _source_row = 10 then -1 else lifetime_value end as lifetime_value,"
        " case when _source_row = 11 then null else email end as email) from clean"
    )
    result = _run(con, gates.bronze_gate(CUSTOMERS, expected_rows=299), "broken")
    assert _failed(result) == {
        "expect_column_values_to_be_in_set(status)": 1,
        "expect_column_values_to_not_be_null(_run_id)": 1,
        "expect_column_values_to_match_regex(country_code)": 1,
        "expect_column_values_to_be_between(lifetime_value)": 1,
        "expect_column_values_to_not_be_null(email)": 1,
        "expect_table_row_count_to_equal": None,
    }
    regex = next(o for o in result.failed if o.column == "country_code")
    assert regex.sample == [{"customer_id": 9, "_source_file": "f.csv", "_source_row": 9}]

    con.execute("create table narrow as select * exclude (_checksum_sha256) from clean")
    gate = gates.bronze_gate(CUSTOMERS, expected_rows=300)
    result = validate_duckdb(con, "narrow", gate.name, gate.expectations)
    assert set(_failed(result)) == {
        "expect_table_columns_to_match_set",
        "expect_column_values_to_not_be_null(_checksum_sha256)",
    }
    columns = next(o for o in result.failed if o.expectation == "expect_table_columns_to_match_set")
    assert columns.observed == {"missing": ["_checksum_sha256"]}


@dataclass(frozen=True)
class _Column:
    name: str
    type: str
    nullable: bool = True
    pattern: str | None = None
    min_value: float | None = None
    max_value: float | None = None
    allowed: tuple[str, ...] | None = None
    pii: bool = False


@dataclass(frozen=True)
class _Source:
    name: str
    key: tuple[str, ...]
    columns: tuple[_Column, ...]
    unique_key: bool = False
    schema_version: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def test_bronze_gate_derives_every_rule_from_the_declaration():
    spec = _Source(
        name="events",
        key=("event_id",),
        unique_key=True,
        columns=(
            _Column("event_id", "string", nullable=False),
            _Column("currency", "string", pattern=r"^[A-Z]{3}$"),
            _Column("amount_minor", "int64", min_value=0),
            _Column("score", "decimal", min_value=1, max_value=5),
            _Column("created_on", "date", nullable=False, min_value=0),  # a range only applies to numbers
            _Column("kind", "string", allowed=("a", "b")),
            _Column("body", "string", nullable=False, pii=True),
        ),
    )
    gate = gates.bronze_gate(spec, expected_rows=10)
    assert gate.name == "bronze_events"
    kinds = [(r.kind, r.column) for r in gate.expectations]
    assert ("unique", "event_id") in kinds
    assert {("not_null", c) for c in ("event_id", "created_on", "body", "business_date", "_run_id")} <= set(kinds)
    assert ("not_null", "currency") not in kinds
    assert rules.matches_regex("currency", r"^[A-Z]{3}$") in gate.expectations
    assert rules.between("amount_minor", 0, None) in gate.expectations
    assert rules.between("score", 1, 5) in gate.expectations
    assert ("between", "created_on") not in kinds
    assert rules.accepted_values("kind", ("a", "b")) in gate.expectations
    assert gate.expectations[-1] == rules.row_count(10)
    assert "body" not in gate.sample_columns

    composite = gates.bronze_gate(_Source("pairs", ("a", "b"), (_Column("a", "string"),), unique_key=True), 1)
    assert rules.unique_combination(("a", "b")) in composite.expectations


# --- silver -------------------------------------------------------------------------------------------

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
from range(1, 1001) as t(i);
create schema if not exists bronze;
create or replace table bronze.customers as
select i::bigint as customer_id, date '2025-11-05' as business_date from range(1, 1001) as t(i)
"""


def test_silver_gate_checks_what_the_yaml_declares(model_gates):
    gate = model_gates["stg_acme__customers"].gate
    # The rules the silver gate has always checked, now declared once in the model YAML.
    for rule in (
        rules.not_null("customer_id"),
        rules.unique("customer_id"),
        rules.accepted_values("status", ("active", "inactive", "closed")),
        rules.matches_regex("email_token", "[0-9a-f]{64}"),
        rules.not_null("email_domain"),
    ):
        assert rule in gate.expectations
    assert gate.sample_columns == ("customer_id", "email_token")


def test_silver_gate_passes_clean_table_and_fails_on_duplicate_key(model_gates):
    gate = model_gates["stg_acme__customers"].gate
    con = duckdb.connect()
    con.execute(SILVER_SQL)
    result = _run(con, gate, "silver.stg_acme__customers")
    assert result.success, result.summary()

    con.execute(
        "insert into silver.stg_acme__customers select * replace ('Active' as status) "
        "from silver.stg_acme__customers where customer_id = 42"
    )
    con.execute("update silver.stg_acme__customers set email_token = upper(email_token) where customer_id = 43")
    con.execute("update silver.stg_acme__customers set email_domain = null where customer_id = 44")
    con.execute("delete from bronze.customers where customer_id = 45")  # silver still holds its record
    result = _run(con, gate, "silver.stg_acme__customers")
    assert _failed(result) == {
        "expect_column_values_to_be_unique(customer_id)": 2,
        "expect_column_values_to_be_in_set(status)": 1,
        "expect_column_values_to_match_regex(email_token)": 1,
        "expect_column_values_to_not_be_null(email_domain)": 1,
        "every customer's record kept here is still in bronze": 1,
    }
    unique = next(o for o in result.outcomes if o.expectation == "expect_column_values_to_be_unique")
    assert {row["customer_id"] for row in unique.sample} == {42}
    # Only sample columns, and only those the rule's rows have: the bronze check returns keys alone.
    in_bronze = next(o for o in result.failed if o.expectation.startswith("every customer"))
    assert in_bronze.sample == [{"customer_id": 45}]
    assert all(
        set(row) == {"customer_id", "email_token"} for o in result.failed if o is not in_bronze for row in o.sample
    )


# --- gold: customers ----------------------------------------------------------------------------------

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

ONE_CURRENT = "exactly one current row per customer_id"
OVERLAPPING = "no overlapping validity ranges per customer_id"
VALID_RANGE = "valid_to is null or valid_to > valid_from"


def test_gold_gate_passes_clean_scd2_and_fails_on_broken_history(model_gates):
    gate = model_gates["dim_customers"].gate
    con = duckdb.connect()
    con.execute(GOLD_SQL)
    result = _run(con, gate, "gold.dim_customers")
    assert result.success, result.summary()

    # Two current rows for customer 7: its old version was never closed.
    con.execute("update gold.dim_customers set valid_to = null, is_current = true where customer_id = 7")
    result = _run(con, gate, "gold.dim_customers")
    assert _failed(result) == {ONE_CURRENT: 1, OVERLAPPING: 1}
    current = next(o for o in result.outcomes if o.expectation == ONE_CURRENT)
    assert current.sample == [{"customer_id": 7}]

    # No current row at all for customer 9.
    con.execute(GOLD_SQL)
    con.execute("update gold.dim_customers set is_current = false where customer_id = 9")
    assert _failed(_run(con, gate, "gold.dim_customers")) == {ONE_CURRENT: 1}

    # Overlap only: customer 8's old version ends after its new one starts.
    con.execute(GOLD_SQL)
    con.execute(
        "update gold.dim_customers set valid_to = valid_to + interval 40 days where customer_id = 8 and not is_current"
    )
    assert _failed(_run(con, gate, "gold.dim_customers")) == {OVERLAPPING: 1}

    # Duplicate surrogate key and a version that ends before it starts.
    con.execute(GOLD_SQL)
    con.execute(
        "update gold.dim_customers set customer_sk = (select customer_sk from gold.dim_customers "
        "where customer_id = 1 and is_current) where customer_id = 2 and is_current"
    )
    con.execute(
        "update gold.dim_customers set valid_to = valid_from - interval 1 day where customer_id = 3 and not is_current"
    )
    assert _failed(_run(con, gate, "gold.dim_customers")) == {
        "expect_column_values_to_be_unique(customer_sk)": 2,
        VALID_RANGE: 1,
    }


# --- gold: payout reconciliation ----------------------------------------------------------------------

RECONCILIATION_SQL = """
create schema if not exists gold;
create or replace table gold.payout_reconciliation as
select
  'po_' || i as payout_id,
  'EUR' as currency,
  1000 * i as captured_minor,
  10 * i as refunded_minor,
  5 * i as fee_minor,
  985 * i as expected_net_minor,
  985 * i + case when i % 10 = 0 then 7 else 0 end as net_paid_minor,
  case when i % 10 = 0 then 7 else 0 end as difference_minor,
  case when i % 10 = 0 then 'mismatched' else 'matched' end as status
from range(1, 101) as t(i)
"""

TOTALS = "sum of expected_net_minor = sum of captured - refunds - fees"
EXPECTED_NET = "expected_net_minor = captured_minor - refunded_minor - fee_minor"
DIFFERENCE = "difference_minor is not distinct from net_paid_minor - expected_net_minor"
MATCHED = "status <> 'matched' or difference_minor = 0"


def test_reconciliation_gate_passes_figures_that_add_up_and_fails_those_that_do_not(model_gates):
    gate = model_gates["payout_reconciliation"].gate
    con = duckdb.connect()
    con.execute(RECONCILIATION_SQL)
    result = _run(con, gate, "gold.payout_reconciliation")
    assert result.success, result.summary()
    assert len(result.outcomes) == len(gate.expectations) >= 8

    con.execute(
        "update gold.payout_reconciliation set expected_net_minor = expected_net_minor + 1 where payout_id = 'po_3'"
    )
    con.execute("update gold.payout_reconciliation set status = 'settled' where payout_id = 'po_4'")
    con.execute("update gold.payout_reconciliation set status = 'matched' where payout_id = 'po_10'")
    result = _run(con, gate, "gold.payout_reconciliation")
    assert _failed(result) == {
        TOTALS: 1,
        EXPECTED_NET: 1,
        DIFFERENCE: 1,  # po_3: the difference no longer matches the changed expected net
        MATCHED: 1,
        "expect_column_values_to_be_in_set(status)": 1,
    }
    matched = next(o for o in result.failed if o.expectation == MATCHED)
    assert matched.sample == [{"payout_id": "po_10", "status": "matched"}]


# --- gold: customer segments --------------------------------------------------------------------------

SEGMENTS_SQL = """
create schema if not exists gold;
create or replace table gold.customer_segments as
select
  i as customer_id,
  i % 90 as recency_days,
  1 + i % 5 as recency_score,
  1 + (i + 1) % 5 as frequency_score,
  1 + (i + 2) % 5 as monetary_score,
  ['champions', 'loyal', 'new', 'at_risk', 'hibernating', 'needs_attention'][1 + i % 6] as segment,
  i % 7 = 0 as is_churn_risk
from range(1, 201) as t(i)
"""


def test_segments_gate_passes_clean_scores_and_fails_out_of_range_ones(model_gates):
    gate = model_gates["customer_segments"].gate
    con = duckdb.connect()
    con.execute(SEGMENTS_SQL)
    result = _run(con, gate, "gold.customer_segments")
    assert result.success, result.summary()

    con.execute("update gold.customer_segments set recency_score = 6 where customer_id in (11, 12)")
    con.execute("update gold.customer_segments set recency_days = -1 where customer_id = 13")
    con.execute("update gold.customer_segments set segment = 'vip', is_churn_risk = null where customer_id = 14")
    result = _run(con, gate, "gold.customer_segments")
    assert _failed(result) == {
        "expect_column_values_to_be_in_set(recency_score)": 2,
        "expect_column_values_to_be_between(recency_days)": 1,
        "expect_column_values_to_be_in_set(segment)": 1,
        "expect_column_values_to_not_be_null(is_churn_risk)": 1,
    }
    score = next(o for o in result.failed if o.column == "recency_score")
    assert sorted(row["customer_id"] for row in score.sample) == [11, 12]
