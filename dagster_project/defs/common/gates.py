import dagster as dg

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
