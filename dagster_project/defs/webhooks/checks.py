import dagster as dg

from dagster_project.defs.common.bronze import build_bronze_gate
from dagster_project.lib.bronze import payment_events
from dagster_project.lib.quality import payment_gates

payment_events_bronze_gate = build_bronze_gate(
    payment_events.TABLE,
    payment_gates.bronze_payment_events,
    description="Great Expectations: columns, event id unique and not null, lineage not null, currency and "
    "amount formats, row count = events received - events quarantined.",
)

defs = dg.Definitions(asset_checks=[payment_events_bronze_gate])
