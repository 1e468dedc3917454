"""Great Expectations gates on silver and gold: blocking checks, so a failed gate stops what is downstream
in the same run and in automation.

Which models are gated and what each gate checks come from the dbt model YAML (a model's
`meta: {gx_gate: ...}` and its data tests, read from the parsed manifest by `lib.quality.dbt_rules`): a rule
is declared once and checked by both dbt and GX. A gate follows the partitioning of the dbt step that builds
its model; it validates the model's Delta table in the lake, read in place.
"""

from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
from dagster_dbt import get_asset_key_for_model

from dagster_project.defs.common.gates import gate_check_result, per_partition
from dagster_project.defs.common.resources import LakeResource
from dagster_project.defs.transform.assets import assets_for_model, dbt_manifest
from dagster_project.lib.quality.dbt_rules import ModelGate, model_gates


def build_model_gate(model_gate: ModelGate, assets: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    """The blocking GX check of one dbt model, on the asset `assets` holds for it, with its partitions."""
    key = get_asset_key_for_model([assets], model_gate.model)
    layer = key.path[0]  # the translator keys models [layer, model]
    gate = model_gate.gate

    @dg.asset_check(
        asset=key,
        name=f"gx_{layer}_gate",
        blocking=True,
        partitions_def=assets.partitions_def,  # None for a model rebuilt in full: no partitions to check
        description=f"Great Expectations: the {len(gate.expectations)} data tests of {model_gate.model} "
        "declared in its dbt YAML.",
    )
    def _gate(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> Iterator[Any]:
        # Imported here: GX and DuckDB load only when a gate runs, not with the code location.
        from dagster_project.lib.quality.gx_runner import validate_lake

        result = validate_lake(
            lake.lake,
            model_gate.relation,
            gate.name,
            gate.expectations,
            sample_columns=list(gate.sample_columns),
        )
        # One result for every partition of the run: the gate reads the whole table.
        [spec] = context.check_specs
        yield from per_partition(context.op_execution_context, spec, gate_check_result(result))

    return _gate


def model_gates_checks(manifest: Mapping[str, Any]) -> list[dg.AssetChecksDefinition]:
    """A gate for every dbt model whose YAML declares one."""
    return [build_model_gate(g, assets_for_model(g.model)) for g in model_gates(manifest)]


@dg.definitions
def defs() -> dg.Definitions:
    _, manifest = dbt_manifest()  # the one the dbt steps were built from
    return dg.Definitions(asset_checks=model_gates_checks(manifest))
