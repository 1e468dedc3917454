import dagster as dg

from dagster_project.lib.quality.gx_runner import GateResult


def gate_check_result(result: GateResult) -> dg.AssetCheckResult:
    """A Great Expectations gate as an asset check result: which expectation failed, on how many rows,
    with a sample of keys or tokens only (never raw PII)."""
    return dg.AssetCheckResult(
        passed=result.success,
        severity=dg.AssetCheckSeverity.ERROR,
        description=result.summary(),
        metadata={
            "suite": result.suite,
            "seconds": round(result.seconds, 3),
            "expectations": len(result.outcomes),
            "failed": dg.MetadataValue.json(
                [
                    {
                        "expectation": o.expectation,
                        "column": o.column,
                        "unexpected_count": o.unexpected_count,
                        "element_count": o.element_count,
                        "observed": o.observed if isinstance(o.observed, int | float | str | None) else str(o.observed),
                        "sample": o.sample,
                    }
                    for o in result.failed
                ]
            ),
        },
    )


def latest_partition_metadata(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition_key: str
) -> dict[str, object]:
    """The metadata values of an asset partition's latest materialization (empty if never materialized)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition_key]), limit=1
    ).records
    if not records:
        return {}
    materialization = records[0].asset_materialization
    return {k: v.value for k, v in (materialization.metadata if materialization else {}).items()}
