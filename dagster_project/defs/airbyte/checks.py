"""The blocking Great Expectations gate on bronze orders."""

import dagster as dg

from dagster_project.defs.airbyte.assets import BRONZE_KEY
from dagster_project.defs.common.gates import gate_check_result, latest_partition_metadata
from dagster_project.defs.common.partitions import daily_partitions
from dagster_project.defs.common.resources import LakeResource
from dagster_project.lib import gates, orders
from dagster_project.lib.contract import PARTITION_COLUMN
from dagster_project.lib.gx_runner import validate_delta


@dg.asset_check(
    asset=BRONZE_KEY,
    name="gx_bronze_gate",
    blocking=True,
    partitions_def=daily_partitions,
    description="Great Expectations: columns, key and lineage not null, accepted statuses, "
    "row count = records received - quarantined - duplicates dropped.",
)
def bronze_orders_gate(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
    partition = context.partition_key
    metadata = latest_partition_metadata(context.instance, BRONZE_KEY, partition)
    expected = (
        int(metadata.get("received", 0))
        - int(metadata.get("quarantined", 0))
        - int(metadata.get("duplicates_dropped", 0))
    )
    gate = gates.bronze_gate(orders.ORDERS, expected_rows=expected)
    result = validate_delta(
        lake.bronze_path(orders.TABLE),
        gate.name,
        gate.expectations,
        predicate_sql=f"{PARTITION_COLUMN} = ?::DATE",
        params=[partition],
        sample_columns=list(gate.sample_columns),
    )
    return gate_check_result(result)


defs = dg.Definitions(asset_checks=[bronze_orders_gate])
