"""The quality gate on gold customer segments, the table reverse ETL pushes to the CRM."""

from __future__ import annotations

import great_expectations.expectations as gxe
from great_expectations.expectations import Expectation

from dagster_project.lib.quality.gates import Gate

SEGMENTS: tuple[str, ...] = ("champions", "loyal", "new", "at_risk", "hibernating", "needs_attention")
SCORES = ("recency_score", "frequency_score", "monetary_score")


def gold_customer_segments() -> Gate:
    """`gold.customer_segments`: one row per customer, scores 1..5, a known segment, the churn flag set."""
    expectations: list[Expectation] = [
        gxe.ExpectColumnValuesToNotBeNull(column="customer_id"),
        gxe.ExpectColumnValuesToBeUnique(column="customer_id"),
        *(gxe.ExpectColumnValuesToBeBetween(column=c, min_value=1, max_value=5) for c in SCORES),
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in SCORES),
        gxe.ExpectColumnValuesToBeInSet(column="segment", value_set=list(SEGMENTS)),
        gxe.ExpectColumnValuesToNotBeNull(column="is_churn_risk"),
        gxe.ExpectColumnValuesToBeBetween(column="recency_days", min_value=0),
    ]
    segments = ", ".join(f"'{s}'" for s in SEGMENTS)
    sql = (
        "select\n"
        "  count(*) filter (where customer_id is null) as customer_id_null,\n"
        + "".join(f"  count(*) filter (where {c} is null or {c} not between 1 and 5) as {c}_invalid,\n" for c in SCORES)
        + f"  count(*) filter (where segment is null or segment not in ({segments})) as segment_not_accepted,\n"
        "  count(*) filter (where is_churn_risk is null) as is_churn_risk_null,\n"
        "  count(*) filter (where recency_days < 0) as recency_days_negative\n"
        "from {relation}",
        "select coalesce(sum(n), 0) as customer_id_duplicated from (\n"
        "  select count(*) as n from {relation} where customer_id is not null\n"
        "  group by customer_id having count(*) > 1\n"
        ")",
    )
    return Gate("gold_customer_segments", expectations, sql, sample_columns=("customer_id",))
