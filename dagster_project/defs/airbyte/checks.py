"""The blocking Great Expectations gate on bronze orders."""

import functools

import dagster as dg

from dagster_project.defs.common.bronze import build_bronze_gate
from dagster_project.lib.bronze import orders
from dagster_project.lib.quality import gates

bronze_orders_gate = build_bronze_gate(
    orders.TABLE,
    functools.partial(gates.bronze_gate, orders.ORDERS),
    description="Great Expectations: columns, key and lineage not null, accepted statuses, "
    "row count = records received - quarantined - duplicates dropped.",
    dropped=("duplicates_dropped",),
)

defs = dg.Definitions(asset_checks=[bronze_orders_gate])
