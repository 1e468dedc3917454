"""The Great Expectations gate on gold payout reconciliation: a blocking check on the dbt model."""

import dagster as dg

from dagster_project.defs.transform.assets import dbt_gold
from dagster_project.defs.transform.checks import build_warehouse_gate
from dagster_project.lib.quality import payment_gates

# The mart is rebuilt in full by every run, so the gate checks the whole table whatever the partition.
payout_reconciliation_gate = build_warehouse_gate(
    dbt_gold,
    "payout_reconciliation",
    payment_gates.gold_payout_reconciliation(),
    "Great Expectations: payout_id unique, status in the accepted set, expected net = captured - refunds - "
    "fees per payout and in total, matched only when nothing is left over.",
)

defs = dg.Definitions(asset_checks=[payout_reconciliation_gate])
