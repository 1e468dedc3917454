"""dbt models as Dagster assets, one step per layer and per way a model is rebuilt.

Every model is a Delta table in the lake (`<lake>/<layer>/<model>`), computed by an in-memory DuckDB that
reads only the partitions it needs (dbt_project/macros/materializations/lake.sql).

Incremental models are partitioned by business date: a run passes its partition window to dbt as the vars
`min_date`/`max_date`, and the model recomputes only what bronze changed in it. Every other model is
rebuilt from all of its inputs on every run, so it has no partitions: the UI then says what is true of it
(materialized or not), not "n of 699 partitions". This is the split of Dagster's own platform
(dagster-open-platform, defs/dbt/assets.py).

Runs of different partitions run at once. A Delta commit that loses to a concurrent writer of the same
table fails its model; the step's retry policy then runs dbt again from fresh inputs. Full rebuilds of
one layer take one `LAKE_REBUILD_POOL` slot at a time: two at once would compute the same tables twice.

Silver and gold stay separate steps of a run so that a blocking check on a silver asset (a dbt test or
the quality gate) stops the gold step in the same run.

Nothing is built at import: the manifest is read and the steps are built on first use
(`dbt_assets_definitions()`), when the definitions load.
"""

import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtProject, dbt_assets, get_asset_key_for_model

from dagster_project import settings
from dagster_project.defs.common.partitions import LAKE_REBUILD_POOL, daily_partitions
from dagster_project.defs.transform.resources import MedallionDbtCliResource, load_dbt_project

BRONZE = "bronze"
SILVER = "silver"
GOLD = "gold"

# The one mapping from dbt folders to lakehouse layers; asset keys, groups and the split into steps
# all derive from it.
LAYER_OF_FOLDER: Mapping[str, str] = {
    "models/staging": SILVER,
    "models/marts": GOLD,
}
LAYERS = (SILVER, GOLD)  # in run order

INCREMENTAL = "config.materialized:incremental"
DBT_NODE_TYPES = ("model", "snapshot", "seed")
# A lost commit race (another run wrote the same Delta table first) fails the step; dbt then runs again.
CONFLICT_RETRY = dg.RetryPolicy(max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


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


def is_incremental(dbt_resource_props: Mapping[str, Any]) -> bool:
    return dbt_resource_props.get("config", {}).get("materialized") == "incremental"


@dataclass(frozen=True)
class DbtStep:
    """The models of one layer that are (or are not) incremental, run as one step."""

    layer: str
    partitioned: bool

    @property
    def name(self) -> str:
        return f"dbt_{self.layer}_daily" if self.partitioned else f"dbt_{self.layer}"

    @property
    def select(self) -> str:
        if self.partitioned:  # dbt: a comma intersects, a space unites
            return " ".join(f"{folder},{INCREMENTAL}" for folder in dbt_selection(self.layer).split())
        return dbt_selection(self.layer)

    @property
    def exclude(self) -> str | None:
        return None if self.partitioned else INCREMENTAL

    def holds(self, dbt_resource_props: Mapping[str, Any]) -> bool:
        return layer_of(dbt_resource_props) == self.layer and is_incremental(dbt_resource_props) == self.partitioned


def dbt_steps(manifest: Mapping[str, Any]) -> list[DbtStep]:
    """The steps that hold at least one model of the manifest, silver before gold."""
    nodes = [n for n in manifest["nodes"].values() if n["resource_type"] in DBT_NODE_TYPES]
    candidates = [DbtStep(layer, partitioned) for layer in LAYERS for partitioned in (True, False)]
    return [step for step in candidates if any(step.holds(node) for node in nodes)]


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


def build_dbt_step(project: DbtProject, manifest: Mapping[str, Any], step: DbtStep) -> dg.AssetsDefinition:
    @dbt_assets(
        manifest=manifest,
        project=project,
        select=step.select,
        exclude=step.exclude,
        name=step.name,
        dagster_dbt_translator=MedallionDbtTranslator(),
        partitions_def=daily_partitions if step.partitioned else None,
        backfill_policy=dg.BackfillPolicy.single_run() if step.partitioned else None,
        pool=None if step.partitioned else LAKE_REBUILD_POOL,
        retry_policy=CONFLICT_RETRY,
    )
    def _dbt_step(context: dg.AssetExecutionContext, dbt: MedallionDbtCliResource) -> Iterator[Any]:
        args = ["build"]
        if step.partitioned:
            window = partition_window_vars(context.partition_time_window)
            context.log.info(f"dbt build for business dates {window['min_date']}..{window['max_date']}")
            args += ["--vars", json.dumps(window)]
        yield from dbt.cli(args, context=context).stream()

    return _dbt_step


@functools.cache
def dbt_assets_definitions() -> tuple[dg.AssetsDefinition, ...]:
    """Every dbt step, built once per process from the parsed manifest."""
    project = load_dbt_project()
    manifest = json.loads(project.manifest_path.read_text())
    return tuple(build_dbt_step(project, manifest, step) for step in dbt_steps(manifest))


def model_key(model: str) -> dg.AssetKey:
    """The asset key of the dbt model (or snapshot) `model`, as the translator gives it."""
    # Any one step will do: the key comes from the whole manifest, whichever step is asked.
    return get_asset_key_for_model(dbt_assets_definitions()[:1], model)


def assets_for_model(model: str) -> dg.AssetsDefinition:
    """The dbt step that holds the model (or snapshot) `model`: its key, partitions and checks."""
    key = model_key(model)
    return next(step for step in dbt_assets_definitions() if key in step.keys)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=list(dbt_assets_definitions()),
        resources={
            "dbt": MedallionDbtCliResource(
                project_dir=str(settings.dbt_project_dir()),
                profiles_dir=str(settings.dbt_project_dir()),
                lake_root=settings.lake_root(),
            ),
        },
    )
