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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Any

import dagster as dg
from dagster_dbt import (
    DagsterDbtTranslator,
    DagsterDbtTranslatorSettings,
    DbtProject,
    dbt_assets,
    get_asset_key_for_model,
)

from dagster_project import settings
from dagster_project.defs.common import catalog
from dagster_project.defs.common.partitions import LAKE_REBUILD_POOL, daily_partitions
from dagster_project.defs.transform.resources import MedallionDbtCliResource, load_dbt_project
from dagster_project.lib.bronze.catalog import PARTITION_COLUMN
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.registry import SOURCES

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
    """Keys `[layer, model_name]` and groups by layer; sources are the bronze assets `[bronze, table]`.

    A model's table is named `<layer>.<model>` (as the lake's DuckDB views and the gates name it) and its
    columns come from its YAML. Its owners are those its YAML (or dbt_project.yml) declares under
    `meta.dagster.owners`; a staging model without them is owned by the owners of its source in the registry.
    Code references point at the model's .sql file."""

    def __init__(self) -> None:
        super().__init__(DagsterDbtTranslatorSettings(enable_code_references=True))
        # dagster-dbt asks for a spec hundreds of times while building the steps (it memoizes its own part).
        self._catalog_specs: dict[tuple[int, str, int], dg.AssetSpec] = {}

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

    def get_metadata(self, dbt_resource_props: Mapping[str, Any]) -> Mapping[str, Any]:
        metadata = super().get_metadata(dbt_resource_props)
        if dbt_resource_props["resource_type"] not in DBT_NODE_TYPES:
            return metadata
        key = self.get_asset_key(dbt_resource_props)
        return {**metadata, **catalog.table_metadata(*key.path)}

    def get_owners(self, dbt_resource_props: Mapping[str, Any]) -> Sequence[str] | None:
        declared = super().get_owners(dbt_resource_props)
        if declared or dbt_resource_props["resource_type"] not in DBT_NODE_TYPES:
            return declared
        folder = PurePosixPath(dbt_resource_props["original_file_path"]).parent
        if layer_of(dbt_resource_props) == SILVER and folder.parent == PurePosixPath("models/staging"):
            owners = [o for spec in SOURCES.values() if spec.dbt_source == folder.name for o in spec.owners]
            return list(dict.fromkeys(owners)) or None
        return None

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None) -> dg.AssetSpec:
        memo = (id(manifest), unique_id, id(project))
        if memo in self._catalog_specs:
            return self._catalog_specs[memo]
        spec = super().get_asset_spec(manifest, unique_id, project)
        if catalog.TABLE_NAME not in spec.metadata:
            return spec
        # dagster-dbt names the adapter (DuckDB, the compute) as the storage; the table is a Delta table.
        metadata: dict[str, Any] = {catalog.STORAGE_KIND: "delta"}
        columns = spec.metadata.get(catalog.COLUMN_SCHEMA)
        if isinstance(columns, dg.TableSchema):
            metadata[catalog.COLUMN_SCHEMA] = with_tested_constraints(columns, tests_of(manifest, unique_id))
        self._catalog_specs[memo] = spec.merge_attributes(metadata=metadata)
        return self._catalog_specs[memo]

    def get_asset_check_spec(
        self, asset_spec: dg.AssetSpec, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None
    ) -> dg.AssetCheckSpec | None:
        spec = super().get_asset_check_spec(asset_spec, manifest, unique_id, project)
        if spec is None or spec.description:
            return spec
        return spec._replace(description=describe_test(manifest["nodes"][unique_id]))


def tests_of(manifest: Mapping[str, Any], unique_id: str) -> list[Mapping[str, Any]]:
    """The generic data tests attached to the model `unique_id`."""
    return [
        node
        for node in manifest["nodes"].values()
        if node["resource_type"] == "test" and node.get("attached_node") == unique_id and node.get("test_metadata")
    ]


def describe_test(test: Mapping[str, Any]) -> str:
    """A dbt data test in words, for the UI: its own description, or what its generic test checks."""
    if test.get("description"):
        return f"dbt: {test['description']}"
    kind = (test.get("test_metadata") or {}).get("name")
    kwargs = (test.get("test_metadata") or {}).get("kwargs") or {}
    column = kwargs.get("column_name") or test.get("column_name")
    match kind:
        case "not_null":
            return f"dbt: {column} is never null"
        case "unique":
            return f"dbt: {column} is unique"
        case "accepted_values":
            return f"dbt: {column} is one of " + ", ".join(map(str, kwargs.get("values") or []))
        case "matches_regex":
            return f"dbt: {column} matches {kwargs.get('pattern')}"
        case "accepted_range":
            return f"dbt: {column} is " + _range(kwargs.get("min_value"), kwargs.get("max_value"))
        case "unique_combination_of_columns":
            return "dbt: " + ", ".join(kwargs.get("combination_of_columns") or []) + " are unique together"
        case "expression_is_true":
            return f"dbt: every row satisfies {kwargs.get('expression')}"
    return f"dbt test {test['name']}"


def _range(low: object, high: object) -> str:
    if low is not None and high is not None:
        return f"between {low} and {high}"
    return f">= {low}" if low is not None else f"<= {high}"


def with_tested_constraints(columns: dg.TableSchema, tests: Sequence[Mapping[str, Any]]) -> dg.TableSchema:
    """The model's columns with what its data tests hold them to: not_null and unique as the column's
    nullability and uniqueness, its other single-column tests in words."""
    by_column: dict[str, dict[str, Mapping[str, Any]]] = {}
    for test in tests:
        kwargs = test["test_metadata"].get("kwargs") or {}
        column = kwargs.get("column_name") or test.get("column_name")
        if column:
            by_column.setdefault(column, {})[test["test_metadata"]["name"]] = test

    def constrained(column: dg.TableColumn) -> dg.TableColumn:
        kinds = by_column.get(column.name, {})
        other = [
            describe_test(test).removeprefix(f"dbt: {column.name} ")
            for kind, test in sorted(kinds.items())
            if kind not in ("not_null", "unique")
        ]
        return dg.TableColumn(
            name=column.name,
            type=column.type,
            description=column.description,
            constraints=dg.TableColumnConstraints(
                nullable="not_null" not in kinds, unique="unique" in kinds, other=other
            ),
            tags=column.tags,
        )

    return dg.TableSchema(columns=[constrained(c) for c in columns.columns], constraints=columns.constraints)


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
        day = None
        if step.partitioned:
            window = partition_window_vars(context.partition_time_window)
            context.log.info(f"dbt build for business dates {window['min_date']}..{window['max_date']}")
            args += ["--vars", json.dumps(window)]
            day = window["min_date"] if window["min_date"] == window["max_date"] else None
        lake = Lake.parse(dbt.lake_root, settings.lake_storage_options())
        for event in dbt.cli(args, context=context).stream():
            yield with_table_facts(context, event, lake, day)

    return _dbt_step


def with_table_facts(context: dg.AssetExecutionContext, event: Any, lake: Lake, day: str | None) -> Any:
    """A model's materialization with what its Delta table holds now, read from the table's log: the column
    schema with the real types (the YAML's descriptions and tested constraints kept), the row count, and
    the rows of the run's business date when the run is of one date and the table is partitioned by it."""
    if not isinstance(event, dg.Output):
        return event
    from dagster_project.lib.lake_tables import table_facts  # deltalake loads where a step runs

    spec = context.assets_def.specs_by_key[context.asset_key_for_output(event.output_name)]
    layer, _, table = str(spec.metadata.get(catalog.TABLE_NAME, "")).partition(".")
    facts = table_facts(lake, layer, table, PARTITION_COLUMN) if table else None
    if facts is None:
        return event
    declared = spec.metadata.get(catalog.COLUMN_SCHEMA)
    known = {c.name: c for c in declared.columns} if isinstance(declared, dg.TableSchema) else {}
    columns = dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=name,
                type=type_,
                description=known[name].description if name in known else None,
                constraints=known[name].constraints if name in known else dg.TableColumnConstraints(nullable=nullable),
                tags=known[name].tags if name in known else None,
            )
            for name, type_, nullable in facts.columns
        ]
    )
    metadata: dict[str, Any] = {catalog.COLUMN_SCHEMA: columns, "delta_version": facts.version}
    if facts.row_count is not None:
        metadata["dagster/row_count"] = facts.row_count
    if day is not None and facts.rows_by_partition is not None:
        metadata["dagster/partition_row_count"] = facts.rows_by_partition.get(day, 0)
    return event.with_metadata({**event.metadata, **metadata})


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
        assets=[catalog.with_lake_uri(step) for step in dbt_assets_definitions()],
        resources={
            "dbt": MedallionDbtCliResource(
                project_dir=str(settings.dbt_project_dir()),
                profiles_dir=str(settings.dbt_project_dir()),
                lake_root=settings.lake_root(),
            ),
        },
    )
