from collections.abc import Iterator

import dagster as dg

# Not exported by `dagster`: what an evaluation names as the materialization it checked. Dagster fills it in
# for an `AssetCheckResult` of a single partition only; a range run has to give it per partition itself.
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from dagster_project.lib.quality.gx_runner import GateResult


def gate_check_result(result: GateResult) -> dg.AssetCheckResult:
    """A Great Expectations gate as an asset check result: which expectations failed, with what they found
    (counts, observed value, a sample of keys or tokens only, never raw PII), and the whole validation
    result beside it, so that a failed gate is read in the UI without rerunning it.

    GX runs in an ephemeral context and stores nothing: the validation result lives in this metadata."""
    statistics = result.statistics()
    return dg.AssetCheckResult(
        passed=result.success,
        severity=dg.AssetCheckSeverity.ERROR,
        description=result.summary(),
        metadata={
            "suite": result.suite,
            **({"relation": result.relation} if result.relation else {}),
            **({"table_uri": result.table_uri} if result.table_uri else {}),
            "seconds": round(result.seconds, 3),
            "expectations": statistics["evaluated_expectations"],
            "expectations_passed": statistics["successful_expectations"],
            "expectations_failed": statistics["unsuccessful_expectations"],
            "failed": dg.MetadataValue.json([o.describe() for o in result.failed]),
            "validation": dg.MetadataValue.json(result.validation()),
        },
    )


def per_partition(
    context: dg.OpExecutionContext, spec: dg.AssetCheckSpec, checked: dg.AssetCheckResult
) -> Iterator[dg.AssetCheckResult | dg.AssetCheckEvaluation | dg.Output]:
    """A check's result as the run records it: as it is for a run of one partition (or of an unpartitioned
    check); once per partition for a run of a range of partitions (a backfill run as one, automation catching
    up several days). `spec` is the check's, `context` the op's (a gate's, or a dbt step's for its tests).

    Dagster records an `AssetCheckResult` of a range run once, without a partition, so every partition of
    the range would keep its check "planned", shown as skipped, and automation (`all_deps_blocking_checks_
    passed`) would wait for ever for a result on each of them. A gate validates the model's whole table, and a
    dbt test the model's table as the run left it, so its one result holds for every partition of the run:
    each gets an evaluation naming its own latest materialization, which is what makes it current. A failed
    blocking evaluation still fails the step."""
    if (
        spec.partitions_def is None
        or context.has_partition_key
        or not context.has_partition_key_range
        or spec.key not in context.selected_asset_check_keys
    ):
        yield checked
        return
    for partition in context.partition_keys:
        latest = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=spec.asset_key, asset_partitions=[partition]), limit=1
        ).records
        yield dg.AssetCheckEvaluation(
            asset_key=spec.asset_key,
            check_name=spec.name,
            passed=checked.passed,
            metadata=checked.metadata,
            target_materialization_data=AssetCheckEvaluationTargetMaterializationData(
                run_id=latest[0].run_id, storage_id=latest[0].storage_id, timestamp=latest[0].timestamp
            )
            if latest
            else None,
            severity=checked.severity,
            description=checked.description,
            blocking=spec.blocking,
            partition=partition,
        )
    yield dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(spec.key))
