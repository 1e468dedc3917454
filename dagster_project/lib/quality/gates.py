"""The quality gates, one per layer: bronze for every file feed (from its declaration), silver and gold
for customers.

Each gate is a list of Great Expectations expectations (run by `gx_runner`) plus the same rules written by
hand as DuckDB SQL. The SQL is the yardstick of the benchmark (benchmarks/gates.py) and a cross-check in
the tests: every statement returns one row of violation counts, all zero when the gate passes.
`{relation}` in the SQL is the table or view under test; GX's `{batch}` plays that part in row queries.
Rules that GX has no built-in expectation for (SCD2 versioning) are `UnexpectedRowsExpectation`s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import great_expectations.expectations as gxe
from great_expectations.expectations import Expectation

from dagster_project.lib.bronze.contract import LINEAGE_COLUMNS, PARTITION_COLUMN
from dagster_project.lib.sources.registry import CUSTOMERS, FeedSpec

STATUSES: tuple[str, ...] = CUSTOMERS.column("status").allowed or ()
TOKEN_PATTERN = r"^[0-9a-f]{64}$"  # HMAC-SHA256, lowercase hex


@dataclass(frozen=True)
class Gate:
    name: str
    expectations: list[Expectation]
    sql: tuple[str, ...]  # hand-written DuckDB equivalents; each returns one row of counts, all 0 on success
    sample_columns: tuple[str, ...]  # keys and tokens only: what a failure may show

    def sql_for(self, relation: str) -> list[str]:
        # Not str.format: the SQL holds regex quantifiers such as {64}.
        return [s.replace("{relation}", relation) for s in self.sql]


def _sql_list(values: Sequence[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def _sql_rows(values: Sequence[str]) -> str:
    return ", ".join(f"({_sql_list([v])})" for v in values)


# --- bronze -------------------------------------------------------------------------------------------


def bronze_gate(spec: FeedSpec, expected_rows: int) -> Gate:
    """One bronze partition of a file feed, derived from its declaration: every declared, partition and
    lineage column present; key, partition and lineage columns not null; declared accepted values; and
    `expected_rows` (the rows landed for the partition minus the rows quarantined)."""
    columns = (*spec.column_names, PARTITION_COLUMN, *LINEAGE_COLUMNS)
    not_null = (*spec.key, PARTITION_COLUMN, *LINEAGE_COLUMNS)
    accepted = [(c.name, c.allowed) for c in spec.columns if c.allowed is not None]
    expectations: list[Expectation] = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(columns), exact_match=False),
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in not_null),
        *(gxe.ExpectColumnValuesToBeInSet(column=name, value_set=list(values)) for name, values in accepted),
        gxe.ExpectTableRowCountToEqual(value=expected_rows),
    ]
    counts = [f"count(*) filter (where {c} is null) as {c}_null" for c in not_null]
    counts += [
        f"count(*) filter (where {name} not in ({_sql_list(values)})) as {name}_not_accepted"
        for name, values in accepted
    ]
    counts.append(f"abs(count(*) - {int(expected_rows)}) as row_count_off")
    sql = (
        f"select count(*) as missing_columns from (values {_sql_rows(columns)}) as expected(name)\n"
        "where name not in (select column_name from (describe {relation}))",
        "select\n  " + ",\n  ".join(counts) + "\nfrom {relation}",
    )
    return Gate(f"bronze_{spec.name}", expectations, sql, sample_columns=(*spec.key, "_source_file", "_source_row"))


def bronze_customers(expected_rows: int) -> Gate:
    """`bronze_gate` of the customers feed."""
    return bronze_gate(CUSTOMERS, expected_rows)


# --- silver -------------------------------------------------------------------------------------------


def silver_customers() -> Gate:
    """`silver.stg_acme__customers`: one row per customer, PII replaced by tokens."""
    expectations: list[Expectation] = [
        gxe.ExpectColumnValuesToNotBeNull(column="customer_id"),
        gxe.ExpectColumnValuesToBeUnique(column="customer_id"),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=list(STATUSES)),
        gxe.ExpectColumnValuesToMatchRegex(column="email_token", regex=TOKEN_PATTERN),
        gxe.ExpectColumnValuesToNotBeNull(column="email_domain"),
    ]
    sql = (
        "select\n"
        "  count(*) filter (where customer_id is null) as customer_id_null,\n"
        f"  count(*) filter (where status not in ({_sql_list(STATUSES)})) as status_not_accepted,\n"
        f"  count(*) filter (where not regexp_matches(email_token, '{TOKEN_PATTERN}')) as email_token_malformed,\n"
        "  count(*) filter (where email_domain is null) as email_domain_null\n"
        "from {relation}",
        "select coalesce(sum(n), 0) as customer_id_duplicated from (\n"
        "  select count(*) as n from {relation} where customer_id is not null\n"
        "  group by customer_id having count(*) > 1\n"
        ")",
    )
    return Gate("silver_customers", expectations, sql, sample_columns=("customer_id", "email_token"))


# --- gold ---------------------------------------------------------------------------------------------

# Row queries shared by GX (over `{batch}`) and the hand-written SQL (over `{relation}`).
_NOT_ONE_CURRENT = (
    "select customer_id, count(*) filter (where is_current) as current_versions\n"
    "from {table} group by customer_id\n"
    "having count(*) filter (where is_current) <> 1"
)
_OVERLAPPING = (
    "select customer_sk, customer_id, valid_from, valid_to from (\n"
    "  select customer_sk, customer_id, valid_from, valid_to,\n"
    "    lead(valid_from) over (partition by customer_id order by valid_from, customer_sk) as next_valid_from\n"
    "  from {table}\n"
    ") as versions\n"
    "where next_valid_from < coalesce(valid_to, 'infinity'::timestamptz)"
)


def gold_dim_customers() -> Gate:
    """`gold.dim_customers` (SCD2): one current version per customer, versions that never overlap."""
    expectations: list[Expectation] = [
        gxe.ExpectColumnValuesToBeUnique(column="customer_sk"),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="valid_to", column_B="valid_from", or_equal=False, ignore_row_if="either_value_is_missing"
        ),
        gxe.UnexpectedRowsExpectation(
            description="exactly one current row per customer_id",
            unexpected_rows_query=_NOT_ONE_CURRENT.format(table="{batch}"),
        ),
        gxe.UnexpectedRowsExpectation(
            description="no overlapping validity ranges per customer_id",
            unexpected_rows_query=_OVERLAPPING.format(table="{batch}"),
        ),
    ]
    sql = (
        "select coalesce(sum(n), 0) as customer_sk_duplicated from (\n"
        "  select count(*) as n from {relation} where customer_sk is not null\n"
        "  group by customer_sk having count(*) > 1\n"
        ")",
        "select count(*) filter (where valid_to <= valid_from) as valid_to_not_after_valid_from from {relation}",
        f"select count(*) as not_one_current from ({_NOT_ONE_CURRENT.format(table='{relation}')})",
        f"select count(*) as overlapping from ({_OVERLAPPING.format(table='{relation}')})",
    )
    return Gate("gold_dim_customers", expectations, sql, sample_columns=("customer_sk", "customer_id"))
