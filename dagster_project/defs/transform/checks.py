"""Great Expectations gates on silver and gold: blocking checks, so a failed gate stops what is downstream
in the same run and in automation."""

import dagster as dg
from dagster_dbt import get_asset_key_for_model

from dagster_project import settings
from dagster_project.defs.common.gates import gate_check_result
from dagster_project.defs.common.partitions import WAREHOUSE_POOL, daily_partitions
from dagster_project.defs.transform.assets import dbt_gold, dbt_silver
from dagster_project.lib.quality import gates
from dagster_project.lib.quality.gx_runner import validate_duckdb_file


def build_warehouse_gate(
    assets: dg.AssetsDefinition, model: str, gate: gates.Gate, description: str
) -> dg.AssetChecksDefinition:
    key = get_asset_key_for_model([assets], model)
    layer = key.path[0]  # the translator keys models [layer, model]; the layer is also the DuckDB schema

    @dg.asset_check(
        asset=key,
        name=f"gx_{layer}_gate",
        blocking=True,
        partitions_def=daily_partitions,
        pool=WAREHOUSE_POOL,
        description=description,
    )
    def _gate() -> dg.AssetCheckResult:
        result = validate_duckdb_file(
            settings.warehouse_path(),
            f"{layer}.{model}",
            gate.name,
            gate.expectations,
            sample_columns=list(gate.sample_columns),
        )
        return gate_check_result(result)

    return _gate


defs = dg.Definitions(
    asset_checks=[
        build_warehouse_gate(
            dbt_silver,
            "stg_acme__customers",
            gates.silver_customers(),
            "Great Expectations: one row per customer, accepted statuses, well-formed email tokens.",
        ),
        build_warehouse_gate(
            dbt_gold,
            "dim_customers",
            gates.gold_dim_customers(),
            "Great Expectations: SCD2 validity (one current row per customer, no overlapping ranges).",
        ),
    ]
)
