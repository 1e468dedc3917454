"""The Great Expectations gate on gold customer segments: a blocking check, so reverse ETL never pushes
segments that failed it."""

import dagster as dg

from dagster_project.defs.transform.assets import dbt_gold
from dagster_project.defs.transform.checks import build_warehouse_gate
from dagster_project.lib.quality import segment_gates

customer_segments_gate = build_warehouse_gate(
    dbt_gold,
    "customer_segments",
    segment_gates.gold_customer_segments(),
    "Great Expectations: customer_id unique and not null, RFM scores 1..5, segment in the accepted set, "
    "churn flag set.",
)

defs = dg.Definitions(asset_checks=[customer_segments_gate])
