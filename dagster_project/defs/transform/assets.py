"""dbt models as Dagster assets, one step per layer and per way a model is rebuilt.

Every model is a Delta table in the lake (`<lake>/<layer>/<model>`), computed by an in-memory DuckDB that
reads only the partitions it needs (dbt_project/macros/materializations/lake.sql).

Incremental models are partitioned by business date: a run passes its partition window to dbt (in the run
file of the command, `MedallionDbtCliResource.cli`), and the model recomputes only what bronze changed in it.
Every other model is rebuilt from all of its inputs on every run, so it has no partitions: the UI then says
what is true of it (materialized or not), not "n of 699 partitions". This is the split of Dagster's own
platform (dagster-open-platform, defs/dbt/assets.py).

Runs of different partitions run at once. A Delta commit that loses to a concurrent writer of the same
table fails its model; the step then runs dbt again from fresh inputs (and only then: a failed test fails
the step at once). Full rebuilds of one layer take one `LAKE_REBUILD_POOL` slot at a time: two at once would
compute the same tables twice.

Silver and gold stay separate steps of a run so that a blocking check on a silver asset (a dbt test or
the quality gate) stops the gold step in the same run.

Nothing is built at import: the manifest is read and the steps are built on first use
(`dbt_assets_definitions()`), when the definitions load.

A step is what `@dbt_assets(select=..., exclude=...)` builds (`dbt_step_assets`), with the selection evaluated
here on the manifest's JSON (`dbt_select`) instead of by dbt's selection engine: dagster-dbt's would import
dbt's graph modules and networkx, build dbt's `Manifest` (which starts multiprocessing's resource tracker
process) and set dbt's global flags, in every process that loads the definitions; that was a tenth of the
code location's load. tests/defs/transform/test_dbt_steps.py holds the two to the same result.
"""

import functools
import json
import random
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Any

import dagster as dg
from dagster_dbt import (
    DagsterDbtTranslator,
    DagsterDbtTranslatorSettings,
    DbtProject,
    get_asset_key_for_model,
)
from dagster_dbt.asset_utils import (
    DAGSTER_DBT_EXCLUDE_METADATA_KEY,
    DAGSTER_DBT_SELECT_METADATA_KEY,
    get_node,
    get_upstream_unique_ids,
    is_non_asset_node,
)
from dagster_dbt.errors import DagsterDbtCliRuntimeError

from dagster_project import settings
from dagster_project.defs.common import catalog
from dagster_project.defs.common.gates import per_partition
from dagster_project.defs.common.partitions import LAKE_REBUILD_POOL, daily_partitions
from dagster_project.defs.transform.resources import MedallionDbtCliResource, load_dbt_project
from dagster_project.lib.bronze.catalog import PARTITION_COLUMN
from dagster_project.lib.lake import LOST_COMMIT_RACE, Lake
from dagster_project.lib.retry import RetryPolicy
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
# A step whose dbt lost a commit race (another run wrote the same Delta table first) runs dbt again, from fresh
# inputs, after a growing, jittered delay; any other failure (a failed test, a broken model) fails it at once.
# As many attempts as a bronze load: eight runs of different days merging into one table at once all finish.
CONFLICT_RETRY = RetryPolicy(attempts=8, first_delay=5.0, max_delay=60.0)
_JITTER = random.Random()


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


def partition_window_dates(window: dg.TimeWindow) -> tuple[str, str]:
    """The first and last business date (inclusive, ISO) of a partition window."""
    last_day = window.end - timedelta(days=1)
    return window.start.date().isoformat(), last_day.date().isoformat()


# The manifest's collections that are members of dbt's selection graph (dagster-dbt's list of them).
GRAPH_MEMBERS = (
    "nodes",
    "sources",
    "exposures",
    "functions",
    "metrics",
    "semantic_models",
    "saved_queries",
    "unit_tests",
)
ASSET_RESOURCE_TYPES = ("model", "seed", "snapshot")  # the dbt resources that are assets, as dagster-dbt has them


def _matches(criterion: str, props: Mapping[str, Any]) -> bool:
    method, _, value = criterion.partition(":")
    if method == "path":
        # dbt's `path:` method: the file, or a folder holding it, relative to the project
        return PurePosixPath(props.get("original_file_path") or "").is_relative_to(value)
    if method == "config.materialized":
        return (props.get("config") or {}).get("materialized") == value
    raise ValueError(f"dbt selection method {method!r} (in {criterion!r}) is not evaluated by dbt_select")


def _selected_by(criterion: str, manifest: Mapping[str, Any]) -> set[str]:
    """The members one criterion selects, and the tests of any of them (dbt's eager indirect selection)."""
    direct = {
        unique_id
        for collection in GRAPH_MEMBERS
        for unique_id, props in (manifest.get(collection) or {}).items()
        if _matches(criterion, props)
    }
    children = manifest["child_map"]
    return direct | {
        child
        for unique_id in direct
        for child in children.get(unique_id, ())
        if get_node(manifest, child)["resource_type"] in ("test", "unit_test")
    }


def _selected_by_union(selection: str, manifest: Mapping[str, Any]) -> set[str]:
    """dbt's selection syntax without graph operators: a space unites, a comma intersects."""
    selected: set[str] = set()
    for part in selection.split():
        selected |= set.intersection(*(_selected_by(criterion, manifest) for criterion in part.split(",")))
    return selected


def dbt_select(manifest: Mapping[str, Any], select: str, exclude: str | None) -> set[str]:
    """The unique ids `dbt build --select select --exclude exclude` runs, as dagster-dbt has dbt select them
    from the manifest: each criterion with the tests of what it selects, the exclusion likewise.

    Only the `path:` (a project folder) and `config.materialized:` methods are known here, the ones the steps
    use; any other fails loudly rather than select something else than dbt would."""
    selected = _selected_by_union(select, manifest)
    return selected - _selected_by_union(exclude, manifest) if exclude else selected


def dbt_step_specs(
    translator: DagsterDbtTranslator, manifest: Mapping[str, Any], project: DbtProject | None, selected: set[str]
) -> tuple[list[dg.AssetSpec], list[dg.AssetCheckSpec]]:
    """The asset and check specs of the selected dbt resources, built as dagster-dbt's `@dbt_assets` builds them:
    the specs of the selected models, seeds and snapshots; as checks, their selected tests."""
    specs: list[dg.AssetSpec] = []
    check_specs: dict[str, dg.AssetCheckSpec] = {}
    unique_ids_by_key: dict[dg.AssetKey, set[str]] = {}
    children = manifest["child_map"]
    for unique_id in (u for collection in GRAPH_MEMBERS for u in manifest.get(collection) or {} if u in selected):
        props = get_node(manifest, unique_id)
        if is_non_asset_node(props) or props["resource_type"] not in ASSET_RESOURCE_TYPES:
            continue
        spec = translator.get_asset_spec(manifest, unique_id, project)
        specs.append(spec)
        unique_ids_by_key.setdefault(spec.key, set()).add(unique_id)
        for child in children.get(unique_id, ()):
            if child in selected and child.startswith("test"):
                check = translator.get_asset_check_spec(
                    asset_spec=spec, manifest=manifest, unique_id=child, project=project
                )
                if check:
                    check_specs[check.get_python_identifier()] = check
        for upstream_id in get_upstream_unique_ids(manifest, props):
            upstream = translator.get_asset_spec(manifest, upstream_id, project)
            unique_ids_by_key.setdefault(upstream.key, set()).add(upstream_id)
            if upstream_id.startswith("source") and translator.settings.enable_source_tests_as_checks:
                for child in (c for c in children.get(upstream_id, ()) if c.startswith("test")):
                    check = translator.get_asset_check_spec(
                        asset_spec=upstream, manifest=manifest, unique_id=child, project=project
                    )
                    if check:
                        check_specs[check.get_python_identifier()] = check
    shared = {key: ids for key, ids in unique_ids_by_key.items() if len(ids) > 1}
    if shared and not (
        translator.settings.enable_duplicate_source_asset_keys
        and all(get_node(manifest, u)["resource_type"] == "source" for ids in shared.values() for u in ids)
    ):
        raise dg.DagsterInvalidDefinitionError(
            "dbt resources share an asset key: "
            + "; ".join(f"{key.to_user_string()}: {', '.join(sorted(ids))}" for key, ids in shared.items())
        )
    return specs, list(check_specs.values())


def dbt_step_assets(
    *,
    project: DbtProject,
    manifest: Mapping[str, Any],
    select: str,
    exclude: str | None,
    name: str,
    translator: DagsterDbtTranslator,
    **multi_asset_args: Any,
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """`@dbt_assets(manifest=..., project=..., select=..., exclude=..., name=..., dagster_dbt_translator=...)`,
    with the selection evaluated by `dbt_select`: the same multi-asset (subsettable, its dbt selection in the
    op tags that `DbtCliResource.cli` reads when it runs)."""
    specs, check_specs = dbt_step_specs(translator, manifest, project, dbt_select(manifest, select, exclude))
    # The tests of a daily step are checks of each day, as its models are: a day's result stays that day's,
    # whichever day's run finishes last.
    partitions_def = multi_asset_args.get("partitions_def")
    check_specs = [check._replace(partitions_def=partitions_def) for check in check_specs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.multi_asset(
            name=name,
            specs=specs,
            check_specs=check_specs,
            can_subset=True,
            op_tags={
                DAGSTER_DBT_SELECT_METADATA_KEY: select,
                **({DAGSTER_DBT_EXCLUDE_METADATA_KEY: exclude} if exclude else {}),
            },
            allow_arbitrary_check_specs=True,
            **multi_asset_args,
        )


def build_dbt_step(
    project: DbtProject, manifest: Mapping[str, Any], step: DbtStep, translator: DagsterDbtTranslator
) -> dg.AssetsDefinition:
    @dbt_step_assets(
        manifest=manifest,
        project=project,
        select=step.select,
        exclude=step.exclude,
        name=step.name,
        translator=translator,
        partitions_def=daily_partitions if step.partitioned else None,
        backfill_policy=dg.BackfillPolicy.single_run() if step.partitioned else None,
        pool=None if step.partitioned else LAKE_REBUILD_POOL,
    )
    def _dbt_step(context: dg.AssetExecutionContext, dbt: MedallionDbtCliResource) -> Iterator[Any]:
        window = day = None
        if step.partitioned:
            window = first, last = partition_window_dates(context.partition_time_window)
            context.log.info(f"dbt build for business dates {first}..{last}")
            day = first if first == last else None
        lake = Lake.parse(dbt.lake_root, settings.lake_storage_options())
        try:
            for event in dbt.cli(["build"], window=window, context=context).stream():
                if isinstance(event, dg.AssetCheckResult):  # a dbt test, checked on every day of the run
                    test = dg.AssetCheckKey(event.asset_key, event.check_name)
                    yield from per_partition(
                        context.op_execution_context, context.assets_def.get_spec_for_check_key(test), event
                    )
                else:
                    yield with_table_facts(context, event, lake, day)
        except DagsterDbtCliRuntimeError as error:
            if LOST_COMMIT_RACE not in str(error):
                raise
            raise dg.RetryRequested(
                max_retries=CONFLICT_RETRY.attempts - 1, seconds_to_wait=conflict_delay(context.retry_number)
            ) from error

    return _dbt_step


def conflict_delay(retry_number: int) -> float:
    """Seconds to wait before running again after the step's `retry_number`th retry lost a commit race (0: its
    first run): `CONFLICT_RETRY`'s full jitter, so runs that collided once do not collide again in lockstep."""
    return CONFLICT_RETRY.delay(retry_number + 1, _JITTER)


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
def dbt_manifest() -> tuple[DbtProject, Mapping[str, Any]]:
    """The dbt project and its parsed manifest, read once per process (and, under `dagster dev`, parsed once):
    the steps and the gates (defs/transform/checks.py) are built from the same ones."""
    project = load_dbt_project()
    return project, json.loads(project.manifest_path.read_bytes())


@functools.cache
def dbt_assets_definitions() -> tuple[dg.AssetsDefinition, ...]:
    """Every dbt step, built once per process from the parsed manifest."""
    project, manifest = dbt_manifest()
    # One translator for every step: it memoizes the spec of each dbt resource, upstream ones included.
    translator = MedallionDbtTranslator()
    return tuple(build_dbt_step(project, manifest, step, translator) for step in dbt_steps(manifest))


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
