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

