"""dbt models as Dagster assets: silver (staging) and gold (marts, snapshots) as two steps.

Two `@dbt_assets` rather than one so that silver and gold are separate steps of a run: a blocking check
on a silver asset (the quality gate) then stops the gold step in the same run. Both are partitioned by
business date; a run passes its partition window to dbt as the vars `min_date`/`max_date`, which the
incremental silver models use to recompute only what bronze changed.
"""

import json
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, dbt_assets

from dagster_project.defs.common.partitions import WAREHOUSE_POOL, daily_partitions
from dagster_project.defs.transform.resources import MedallionDbtCliResource, load_dbt_project

BRONZE = "bronze"
SILVER = "silver"
GOLD = "gold"

# The one mapping from dbt folders to lakehouse layers; asset keys, groups and the split into steps
# all derive from it.
LAYER_OF_FOLDER: Mapping[str, str] = {
    "models/staging": SILVER,
    "models/marts": GOLD,
    "snapshots": GOLD,
}


def layer_of(dbt_resource_props: Mapping[str, Any]) -> str:
    path = PurePosixPath(dbt_resource_props["original_file_path"])
    for folder, layer in LAYER_OF_FOLDER.items():
        if path.is_relative_to(folder):
            return layer
    raise ValueError(
        f"dbt {dbt_resource_props['resource_type']} {dbt_resource_props['name']!r} is in {path}, outside "
        f"the layer folders {sorted(LAYER_OF_FOLDER)}; move it or map its folder in LAYER_OF_FOLDER"
    )


def dbt_selection(layer: str) -> str:
    return " ".join(f"path:{folder}" for folder, mapped in LAYER_OF_FOLDER.items() if mapped == layer)


class MedallionDbtTranslator(DagsterDbtTranslator):
    """Keys `[layer, model_name]` and groups by layer; sources are the bronze assets `[bronze, table]`."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            meta = dbt_resource_props.get("config", {}).get("meta") or dbt_resource_props.get("meta") or {}
            if meta.get("dagster", {}).get("asset_key"):
                return super().get_asset_key(dbt_resource_props)  # an explicit key in the sources file wins
            return dg.AssetKey([BRONZE, dbt_resource_props["name"]])
        return dg.AssetKey([layer_of(dbt_resource_props), dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        if dbt_resource_props["resource_type"] == "source":
            return None
        return layer_of(dbt_resource_props)


def partition_window_vars(window: dg.TimeWindow) -> dict[str, str]:
    """dbt vars for a partition window: inclusive first and last business date."""
    last_day = window.end - timedelta(days=1)
    return {"min_date": window.start.date().isoformat(), "max_date": last_day.date().isoformat()}


def _dbt_build(context: dg.AssetExecutionContext, dbt: MedallionDbtCliResource) -> Iterator[Any]:
    dbt_vars = partition_window_vars(context.partition_time_window)
    context.log.info(f"dbt build for business dates {dbt_vars['min_date']}..{dbt_vars['max_date']}")
    yield from dbt.cli(["build", "--vars", json.dumps(dbt_vars)], context=context).stream()


dbt_project = load_dbt_project()
translator = MedallionDbtTranslator()


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    select=dbt_selection(SILVER),
    name="dbt_silver",
    dagster_dbt_translator=translator,
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=WAREHOUSE_POOL,
)
def dbt_silver(context: dg.AssetExecutionContext, dbt: MedallionDbtCliResource) -> Iterator[Any]:
    """Silver: dbt staging models (deduplicated, pseudonymised) with their tests."""
    yield from _dbt_build(context, dbt)


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    select=dbt_selection(GOLD),
    name="dbt_gold",
    dagster_dbt_translator=translator,
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=WAREHOUSE_POOL,
)
def dbt_gold(context: dg.AssetExecutionContext, dbt: MedallionDbtCliResource) -> Iterator[Any]:
    """Gold: dbt marts and snapshots with their tests."""
    yield from _dbt_build(context, dbt)


defs = dg.Definitions(
    assets=[dbt_silver, dbt_gold],
    resources={"dbt": MedallionDbtCliResource(project_dir=dbt_project)},
)
