"""The quality gates of the payments flow: bronze `payment_events` and gold `payout_reconciliation`.

Like `gates`, each gate is a list of Great Expectations expectations plus the same rules as hand-written
DuckDB SQL (one row of violation counts, all zero when the gate passes), used as a cross-check in tests.
"""

from __future__ import annotations

import great_expectations.expectations as gxe
from great_expectations.expectations import Expectation

from dagster_project.lib.bronze import payment_events
from dagster_project.lib.bronze.contract import LINEAGE_COLUMNS, PARTITION_COLUMN
from dagster_project.lib.quality.gates import Gate

CURRENCY_PATTERN = r"^[A-Z]{3}$"
AMOUNT_COLUMNS = ("amount_minor", "amount_refunded_minor", "fee_minor")
RECONCILIATION_STATUSES: tuple[str, ...] = ("matched", "mismatched", "missing_charge", "missing_payout")


def _literals(values: tuple[str, ...]) -> list[str]:
    return ["'" + v.replace("'", "''") + "'" for v in values]


# --- bronze -------------------------------------------------------------------------------------------

PAYMENT_EVENTS_NOT_NULL: tuple[str, ...] = (
    "event_id",
    "event_type",
    "event_created_at",
    "object_type",
    "is_known_type",
    "body",
    PARTITION_COLUMN,
    *LINEAGE_COLUMNS,
)


def bronze_payment_events(expected_rows: int) -> Gate:
    """One bronze partition of webhook events: `expected_rows` is the events received minus those quarantined."""
    expectations: list[Expectation] = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(payment_events.COLUMNS), exact_match=False),
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in PAYMENT_EVENTS_NOT_NULL),
        gxe.ExpectColumnValuesToBeUnique(column="event_id"),
        gxe.ExpectColumnValuesToMatchRegex(column="currency", regex=CURRENCY_PATTERN),
        *(gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in AMOUNT_COLUMNS),
        gxe.ExpectTableRowCountToEqual(value=expected_rows),
    ]
    counts = [f"count(*) filter (where {c} is null) as {c}_null" for c in PAYMENT_EVENTS_NOT_NULL]
    counts.append(f"count(*) filter (where not regexp_matches(currency, '{CURRENCY_PATTERN}')) as currency_malformed")
    counts += [f"count(*) filter (where {c} < 0) as {c}_negative" for c in AMOUNT_COLUMNS]
    counts.append(f"abs(count(*) - {int(expected_rows)}) as row_count_off")
    sql = (
        "select count(*) as missing_columns from (values "
        + ", ".join(f"({v})" for v in _literals(payment_events.COLUMNS))
        + ") as expected(name)\n"
        "where name not in (select column_name from (describe {relation}))",
        "select\n  " + ",\n  ".join(counts) + "\nfrom {relation}",
        "select coalesce(sum(n), 0) as event_id_duplicated from (\n"
        "  select count(*) as n from {relation} where event_id is not null group by event_id having count(*) > 1\n"
        ")",
    )
    return Gate("bronze_payment_events", expectations, sql, sample_columns=("event_id", "_source_file", "_source_row"))


# --- gold ---------------------------------------------------------------------------------------------

# Row queries shared by GX (over `{batch}`) and the hand-written SQL (over `{relation}`).
_TOTALS_INCONSISTENT = (
    "select sum(expected_net_minor) as expected_net_total,\n"
    "  sum(captured_minor) - sum(refunded_minor) - sum(fee_minor) as captured_refunds_fees_total\n"
    "from {table}\n"
    "having sum(expected_net_minor) is distinct from sum(captured_minor) - sum(refunded_minor) - sum(fee_minor)"
)
_ROW_INCONSISTENT = (
    "select payout_id, status, expected_net_minor, net_paid_minor, difference_minor from {table}\n"
    "where expected_net_minor is distinct from captured_minor - refunded_minor - fee_minor\n"
    "  or difference_minor is distinct from net_paid_minor - expected_net_minor\n"
    "  or (status = 'matched' and difference_minor <> 0)"
)


def gold_payout_reconciliation() -> Gate:
    """`gold.payout_reconciliation`: one row per payout with a known status, and figures that add up."""
    expectations: list[Expectation] = [
        gxe.ExpectColumnValuesToNotBeNull(column="payout_id"),
        gxe.ExpectColumnValuesToBeUnique(column="payout_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="status"),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=list(RECONCILIATION_STATUSES)),
        gxe.UnexpectedRowsExpectation(
            description="sum of expected_net_minor = sum of captured - refunds - fees",
            unexpected_rows_query=_TOTALS_INCONSISTENT.format(table="{batch}"),
        ),
        gxe.UnexpectedRowsExpectation(
            description="each payout: expected net = captured - refunds - fees, difference = paid - expected, "
            "matched only when the difference is 0",
            unexpected_rows_query=_ROW_INCONSISTENT.format(table="{batch}"),
        ),
    ]
    sql = (
        "select\n"
        "  count(*) filter (where payout_id is null) as payout_id_null,\n"
        "  count(*) filter (where status is null) as status_null,\n"
        "  count(*) filter (where status not in ("
        + ", ".join(_literals(RECONCILIATION_STATUSES))
        + ")) as status_not_accepted\n"
        "from {relation}",
        "select coalesce(sum(n), 0) as payout_id_duplicated from (\n"
        "  select count(*) as n from {relation} where payout_id is not null group by payout_id having count(*) > 1\n"
        ")",
        f"select count(*) as totals_inconsistent from ({_TOTALS_INCONSISTENT.format(table='{relation}')})",
        f"select count(*) as rows_inconsistent from ({_ROW_INCONSISTENT.format(table='{relation}')})",
    )
    return Gate("gold_payout_reconciliation", expectations, sql, sample_columns=("payout_id", "status"))
