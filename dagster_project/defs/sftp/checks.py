import dagster as dg

from dagster_project.defs.common.gates import gate_check_result, latest_partition_metadata
from dagster_project.defs.common.partitions import daily_partitions
from dagster_project.defs.common.resources import LakeResource
from dagster_project.defs.sftp.assets import bronze_key
from dagster_project.lib import gates
from dagster_project.lib.contract import PARTITION_COLUMN
from dagster_project.lib.feeds import FEEDS, FeedSpec
from dagster_project.lib.gx_runner import validate_delta


def build_bronze_gate(spec: FeedSpec) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=bronze_key(spec),
        name="gx_bronze_gate",
        blocking=True,
        partitions_def=daily_partitions,
        description="Great Expectations: columns, key and lineage not null, accepted values, "
        "row count = rows received - rows quarantined.",
    )
    def _gate(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
        partition = context.partition_key
        metadata = latest_partition_metadata(context.instance, bronze_key(spec), partition)
        expected = int(metadata.get("received", 0)) - int(metadata.get("quarantined", 0))
        gate = gates.bronze_gate(spec, expected_rows=expected)
        result = validate_delta(
            lake.bronze_path(spec.name),
            gate.name,
            gate.expectations,
            predicate_sql=f"{PARTITION_COLUMN} = ?::DATE",
            params=[partition],
            sample_columns=list(gate.sample_columns),
        )
        return gate_check_result(result)

    return _gate


defs = dg.Definitions(asset_checks=[build_bronze_gate(spec) for spec in FEEDS.values()])
