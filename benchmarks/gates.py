"""Each layer's GX gate (GX's SQL engine on DuckDB) against the same rules written by hand in DuckDB SQL.

The gates are the production ones, derived from their declarations (bronze from the customers source,
silver and gold from the dbt model YAML through the parsed manifest). The yardstick is hand-written DuckDB
SQL per kind of rule (`yardstick_sql`): the column rules of a gate in one aggregate scan, each uniqueness
and row-query rule in a statement of its own; every statement returns one row of violation counts, all
zero when the gate passes.

Every layer is a Delta table in a local lake, read in place by DuckDB (`delta_scan`): bronze has two
business dates and is validated one partition at a time. Both sides open their input from scratch on every
run, GX and SQL runs alternate (so both see the same machine load), and each figure is the best of `repeat`
runs. Tables are clean, so every gate passes (a passing gate is the common case, and a failing one additionally fetches
PII-free samples).

    uv run python -m benchmarks.gates [rows]
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
from deltalake import write_deltalake

from dagster_project import settings
from dagster_project.lib.bronze.contract import bronze_schema
from dagster_project.lib.lake import Lake
from dagster_project.lib.quality import dbt_rules, gates
from dagster_project.lib.quality.gx_runner import GateResult, create_batch_view, validate_lake
from dagster_project.lib.quality.rules import BATCH, Rule
from dagster_project.lib.sources.registry import CUSTOMERS

BUSINESS_DATE = dt.date(2025, 11, 5)
SILVER = "silver.stg_acme__customers"
GOLD = "gold.dim_customers"

BRONZE_SQL = """
select
  i as customer_id,
  'customer' || i || '@mail.example.com' as email,
  'First' || (i % 977) as first_name,
  'Last' || (i % 1013) as last_name,
  ['DE', 'FR', 'NL', 'GB', 'US'][1 + i % 5] as country_code,
  date '2024-01-01' + cast(i % 600 as integer) as signup_date,
  cast((i % 500000) / 100.0 as decimal(12, 2)) as lifetime_value,
  ['active', 'active', 'inactive', 'closed'][1 + i % 4] as status,
  timestamptz '2025-11-05 00:00:00+00' + to_seconds(i % 86400) as updated_at,
  $business_date::date as business_date,
  'sftp' as _source,
  'acme_customers_' || strftime($business_date::date, '%Y-%m-%d') || '_seq-00001_crc32-1A2B3C4D.csv' as _source_file,
  i as _source_row,
  '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08' as _checksum_sha256,
  1 as _schema_version,
  timestamptz '2025-11-05 06:00:00+00' as _received_at,
  timestamptz '2025-11-05 06:01:00+00' as _ingested_at,
  'run-0001' as _run_id
from range(1, $rows + 1) as t(i)
"""

SILVER_SQL = """
create schema if not exists silver;
create or replace table silver.stg_acme__customers as
select
  i::bigint as customer_id,
  sha256('customer' || i || '@mail.example.com') as email_token,
  ['mail.example.com', 'example.org', 'shop.example'][1 + i % 3] as email_domain,
  sha256('First' || (i % 977)) as first_name_token,
  sha256('Last' || (i % 1013)) as last_name_token,
  ['DE', 'FR', 'NL', 'GB', 'US'][1 + i % 5] as country_code,
  date '2024-01-01' + cast(i % 600 as integer) as signup_date,
  cast((i % 500000) / 100.0 as decimal(12, 2)) as lifetime_value,
  ['active', 'active', 'inactive', 'closed'][1 + i % 4] as status,
  timestamptz '2025-11-05 00:00:00+00' + to_seconds(i % 86400) as updated_at,
  date '2025-11-05' as business_date,
  'acme_customers_2025-11-05_seq-00001_crc32-1A2B3C4D.csv' as _source_file
from range(1, $rows + 1) as t(i)
"""

# Two versions per customer: a closed one and the current one.
GOLD_SQL = """
create schema if not exists gold;
create or replace table gold.dim_customers as
select
  md5(customer_id || '|' || version) as customer_sk,
  customer_id,
  sha256('customer' || customer_id || '@mail.example.com') as email_token,
  'mail.example.com' as email_domain,
  ['DE', 'FR', 'NL', 'GB', 'US'][1 + customer_id % 5] as country_code,
  case when version = 1 then 'active' else ['active', 'inactive', 'closed'][1 + customer_id % 3] end as status,
  date '2024-01-01' + cast(customer_id % 600 as integer) as signup_date,
  cast((customer_id % 500000) / 100.0 as decimal(12, 2)) as lifetime_value,
  timestamptz '2025-01-01 00:00:00+00' + to_days(cast(version * 30 + customer_id % 20 as integer)) as valid_from,
  case when version = 1
    then timestamptz '2025-01-01 00:00:00+00' + to_days(cast(60 + customer_id % 20 as integer))
  end as valid_to,
  version = 2 as is_current
from range(1, $customers + 1) as c(customer_id), range(1, 3) as v(version)
"""


def _literal(value: object) -> str:
    if isinstance(value, bool | int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _column_count(rule: Rule) -> str | None:
    """The count of rows breaking a column rule, as one aggregate of a shared scan (None: not a column rule)."""
    c = rule.column
    match rule.kind:
        case "not_null":
            return f"count(*) filter (where {c} is null) as {c}_null"
        case "accepted_values":
            return f"count(*) filter (where {c} not in ({', '.join(map(_literal, rule.values))})) as {c}_not_accepted"
        case "matches_regex":
            return f"count(*) filter (where not regexp_full_match({c}, {_literal(rule.pattern)})) as {c}_malformed"
        case "between":
            bounds = [f"{c} < {rule.min_value}"] if rule.min_value is not None else []
            bounds += [f"{c} > {rule.max_value}"] if rule.max_value is not None else []
            return f"count(*) filter (where {' or '.join(bounds)}) as {c}_out_of_range"
        case "row_count":
            return f"abs(count(*) - {int(rule.count or 0)}) as row_count_off"
    return None


def yardstick_sql(gate: gates.Gate, relation: str) -> list[str]:
    """The gate's rules as hand-written DuckDB SQL over `relation`: one statement per scan, one count per rule."""
    counts = [sql for sql in map(_column_count, gate.expectations) if sql]
    statements = ["select\n  " + ",\n  ".join(counts) + f"\nfrom {relation}"] if counts else []
    for rule in gate.expectations:
        match rule.kind:
            case "columns_present":
                names = ", ".join(f"({_literal(c)})" for c in rule.columns)
                statements.append(
                    f"select count(*) as missing_columns from (values {names}) as expected(name)\n"
                    f"where name not in (select column_name from (describe {relation}))"
                )
            case "unique" | "unique_combination":
                cols = ", ".join(rule.columns or (rule.column,))
                statements.append(
                    f"select coalesce(sum(n), 0) as duplicated from (\n  select count(*) as n from {relation}\n"
                    f"  where ({cols}) is not null group by {cols} having count(*) > 1\n)"
                )
            case "unexpected_rows":
                query = (rule.query or "").replace(BATCH, relation)
                statements.append(f"select count(*) as unexpected_rows from ({query})")
    return statements


def warehouse_gates() -> dict[str, gates.Gate]:
    """The silver and gold gates of the dbt model YAML, by relation."""
    manifest = dbt_rules.load_manifest(settings.dbt_project_dir() / "target" / "manifest.json")
    return {g.relation: g.gate for g in dbt_rules.model_gates(manifest)}


def build(work: Path, rows: int) -> Lake:
    """A lake with bronze customers (`rows` rows on BUSINESS_DATE, a tenth as many the day before), silver
    customers and gold dim_customers."""
    lake = Lake.parse(str(work / "lake"))
    con = duckdb.connect()
    schema = bronze_schema(CUSTOMERS)
    for day, n in ((BUSINESS_DATE - dt.timedelta(days=1), max(rows // 10, 1)), (BUSINESS_DATE, rows)):
        reader = con.execute(BRONZE_SQL, {"business_date": day, "rows": n}).to_arrow_reader(1_000_000)
        batches = (pa.Table.from_batches([b]).cast(schema).to_batches()[0] for b in reader)
        write_deltalake(
            lake.table("bronze", "customers"),
            pa.RecordBatchReader.from_batches(schema, batches),
            partition_by=["business_date"],
            mode="append",
        )
    con.execute(SILVER_SQL, {"rows": rows})
    con.execute(GOLD_SQL, {"customers": rows // 2})
    for relation in (SILVER, GOLD):
        rows_of = con.execute(f"select * from {relation}").to_arrow_reader(1_000_000)  # streamed, not copied whole
        write_deltalake(lake.table(*relation.split(".")), rows_of)
    con.close()
    return lake


def _best_of_pairs(first: Callable[[], object], second: Callable[[], object], repeat: int) -> tuple:
    """Best time and last value of each function, run alternately so that both see the same machine load."""
    best = [float("inf"), float("inf")]
    values: list[object] = [None, None]
    for _ in range(repeat):
        for i, fn in enumerate((first, second)):
            start = time.perf_counter()
            values[i] = fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], values[0], best[1], values[1]


def _sql_counts(con: duckdb.DuckDBPyConnection, statements: list[str]) -> list[int]:
    return [int(v or 0) for s in statements for v in con.execute(s).fetchone()]


def _lake_sql(
    lake: Lake, relation: str, gate: gates.Gate, predicate_sql: str | None = None, params: Sequence[object] = ()
) -> list[int]:
    con = lake.connect()  # with the gate's own view of its rows (`validate_lake`)
    try:
        create_batch_view(con, lake, relation, gate.expectations, predicate_sql, params)
        return _sql_counts(con, yardstick_sql(gate, "batch"))
    finally:
        con.close()


def run(rows: int, repeat: int = 3) -> list[dict]:
    out = []
    with tempfile.TemporaryDirectory(prefix="gates-bench-") as tmp:
        lake = build(Path(tmp), rows)
        bronze = gates.bronze_gate(CUSTOMERS, expected_rows=rows)
        warehouse_gate = warehouse_gates()
        silver, gold = warehouse_gate[SILVER], warehouse_gate[GOLD]
        cases: list[tuple[str, gates.Gate, Callable[[], GateResult], Callable[[], list[int]]]] = [
            (
                "bronze",
                bronze,
                lambda: validate_lake(
                    lake,
                    "bronze.customers",
                    bronze.name,
                    bronze.expectations,
                    predicate_sql="business_date = ?",
                    params=[BUSINESS_DATE],
                    sample_columns=bronze.sample_columns,
                ),
                lambda: _lake_sql(lake, "bronze.customers", bronze, "business_date = ?", [BUSINESS_DATE]),
            ),
            (
                "silver",
                silver,
                lambda: validate_lake(
                    lake, SILVER, silver.name, silver.expectations, sample_columns=silver.sample_columns
                ),
                lambda: _lake_sql(lake, SILVER, silver),
            ),
            (
                "gold",
                gold,
                lambda: validate_lake(lake, GOLD, gold.name, gold.expectations, sample_columns=gold.sample_columns),
                lambda: _lake_sql(lake, GOLD, gold),
            ),
        ]
        for layer, gate, gx_fn, sql_fn in cases:
            gx_seconds, result, sql_seconds, counts = _best_of_pairs(gx_fn, sql_fn, repeat)
            assert isinstance(result, GateResult)
            if not result.success or any(counts):
                raise AssertionError(f"{layer} gate should pass on clean data: {result.summary()} / SQL {counts}")
            if len(counts) != len(gate.expectations):
                raise AssertionError(
                    f"{layer}: the SQL yardstick counts {len(counts)} rules, the gate has {len(gate.expectations)}"
                )
            out.append(
                {
                    "layer": layer,
                    "rows": rows,
                    "expectations": len(gate.expectations),
                    "gx_seconds": round(gx_seconds, 3),
                    "sql_seconds": round(sql_seconds, 3),
                    "ratio": round(gx_seconds / sql_seconds, 2),
                }
            )
    return out


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    results = run(rows)
    print(f"{'layer':<8}{'rows':>12}{'checks':>8}{'GX s':>10}{'SQL s':>10}{'ratio':>8}")
    for r in results:
        print(
            f"{r['layer']:<8}{r['rows']:>12,}{r['expectations']:>8}"
            f"{r['gx_seconds']:>10.3f}{r['sql_seconds']:>10.3f}{r['ratio']:>8.2f}"
        )


if __name__ == "__main__":
    main()
