"""Every source's bronze assets, built from its declaration: the bronze + quarantine Delta pair of one
partition load, the figures it reports, and its blocking Great Expectations gate. Sources differ only in
the reader that opens what landed for the date (`lib/bronze/readers/`).

Partitions load in parallel, in runs that share nothing but the lake; the engine retries a load that lost
its commit to a concurrent load of the same partition, reading its input again (`lib/bronze/engine.py`)."""

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

import dagster as dg

from dagster_project.defs.common import catalog
from dagster_project.defs.common.gates import gate_check_result
from dagster_project.defs.common.partitions import daily_partitions
from dagster_project.defs.common.resources import LakeResource
from dagster_project.lib.bronze.catalog import bronze_columns, quarantine_columns
from dagster_project.lib.sources.spec import SourceSpec, WebhookEvents

if TYPE_CHECKING:  # Arrow and the engine load where a partition is loaded, not with the code location
    from dagster_project.lib.bronze.engine import LoadEvent, LoadResult, PartitionState, Reader
    from dagster_project.lib.intake.inbox import Inbox
    from dagster_project.lib.lake import Lake

# Opens the reader of one partition with the run's resources (an inbox connection, the lake's landing zone).
# Called once per attempt of a load: a retry reads what has landed by then.
OpenReader = Callable[[dg.AssetExecutionContext, SourceSpec], "AbstractContextManager[Reader]"]


def bronze_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["bronze", table])


def quarantine_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["quarantine", table])


def _metadata_value(value: Any) -> Any:
    return dg.MetadataValue.json(value) if isinstance(value, dict | list) else value


def _results(
    context: dg.AssetExecutionContext, spec: SourceSpec, load: "LoadResult", lake: LakeResource
) -> Iterator[dg.MaterializeResult]:
    """The bronze and quarantine materializations of one partition load
    (received = loaded + quarantined + duplicates dropped)."""
    if load.quarantined:
        context.log.warning(
            f"{spec.name} {context.partition_key}: {load.quarantined} of {load.received} records quarantined: "
            + ", ".join(f"{reason} ({n})" for reason, n in load.reasons.most_common())
        )
    if load.duplicates:
        context.log.info(f"{spec.name} {context.partition_key}: {load.duplicates} older or repeated deliveries dropped")
    pair = {"load": load.load, "attempts": load.attempts}
    if load.repaired is not None:
        context.log.warning(f"repaired: {load.repaired.describe()}")
        pair["repaired"] = load.repaired.describe()
    yield dg.MaterializeResult(
        asset_key=bronze_key(spec.name),
        metadata={
            "dagster/uri": lake.table("bronze", spec.name),
            "dagster/partition_row_count": load.loaded,
            "received": load.received,
            "loaded": load.loaded,
            "quarantined": load.quarantined,
            "duplicates": load.duplicates,
            "forgotten": load.forgotten,
            **{name: _metadata_value(value) for name, value in load.details.items()},
            "schema_version": spec.schema_version,
            "delta_version": load.bronze_version,
            **pair,
        },
    )
    yield dg.MaterializeResult(
        asset_key=quarantine_key(spec.name),
        metadata={
            "dagster/uri": lake.table("quarantine", spec.name),
            "dagster/partition_row_count": load.quarantined,
            "reasons": dg.MetadataValue.json(dict(load.reasons)),
            "delta_version": load.quarantine_version,
            **pair,
        },
    )


def _log_event(context: dg.AssetExecutionContext, event: "LoadEvent") -> None:
    (context.log.warning if event.kind == "conflict" else context.log.info)(event.message)


@contextmanager
def _inbox(context: dg.AssetExecutionContext, spec: SourceSpec) -> "Iterator[Inbox | None]":
    """The webhook inbox for a webhook source's assets (they have the `inbox` resource); None for others."""
    if not isinstance(spec.reader, WebhookEvents):
        yield None
        return
    with context.resources.inbox.open() as inbox:
        yield inbox


def build_bronze_assets(
    spec: SourceSpec,
    *,
    upstream: dg.AssetKey,
    open_reader: OpenReader,
    required_resource_keys: frozenset[str] = frozenset(),
) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    """The bronze and quarantine assets of `spec`, one partition per business date, and its bronze gate."""
    owners = list(spec.owners)

    @dg.multi_asset(
        name=f"bronze_{spec.name}",
        specs=[
            dg.AssetSpec(
                bronze_key(spec.name),
                deps=[upstream],
                group_name="bronze",
                description=f"{spec.description} Typed, with lineage columns.",
                kinds={"delta"},
                owners=owners,
                metadata={
                    **catalog.table_metadata("bronze", spec.name, catalog.column_schema(bronze_columns(spec))),
                    "primary_key": list(spec.key),
                    "schema_version": spec.schema_version,
                },
            ),
            dg.AssetSpec(
                quarantine_key(spec.name),
                deps=[upstream],
                group_name="quarantine",  # its own box in the graph, where the names alone look alike
                description=f"Records of {spec.name} that broke its contract, with the raw record and every reason.",
                kinds={"delta"},
                owners=owners,
                metadata=catalog.table_metadata("quarantine", spec.name, catalog.column_schema(quarantine_columns())),
            ),
        ],
        partitions_def=daily_partitions,
        required_resource_keys={"lake", "pii_key", *required_resource_keys},
    )
    def _bronze(context: dg.AssetExecutionContext) -> Iterator[dg.MaterializeResult]:
        from dagster_project.lib.bronze import engine
        from dagster_project.lib.erasure import load_forget_list

        lake: LakeResource = context.resources.lake
        forget = load_forget_list(lake.lake, context.resources.pii_key.key_bytes)

        def load() -> "LoadResult":
            return engine.load_partition(
                spec,
                lambda: open_reader(context, spec),
                lake=lake.lake,
                run_id=context.run.run_id,
                business_date=context.partition_key,
                on_event=lambda event: _log_event(context, event),
                forget=forget,
            )

        result = load()
        if result.forgotten:
            # Delivered after its subject was erased: bronze left the records out (or redacted them); what
            # landed, or the inbox's copy, is rewritten too, as `medallion erase` does, and loaded again.
            from dagster_project.lib import erase

            receipt = erase.Receipt(f"late-delivery-{context.run.run_id[:8]}")
            with _inbox(context, spec) as inbox:
                erase.erase_inputs(lake.lake, forget, receipt, inbox=inbox, only=(spec.name, context.partition_key))
            context.log.warning(f"{result.forgotten} records of erased subjects left out: {receipt.render()}")
            result = load()
        yield from _results(context, spec, result, lake)

    # The asset's code, then what the tables derive from (the declaration) and what reads the input.
    references = [catalog.source_declaration(spec.name), catalog.code_reference(open_reader, "Reader of the input")]
    return catalog.with_code_references(_bronze, lambda _: references), build_bronze_gate(spec)


def build_bronze_gate(spec: SourceSpec) -> dg.AssetChecksDefinition:
    """The blocking GX gate of one bronze partition, derived from the declaration. It checks the partition
    as the load that wrote it left it: bronze and quarantine from that one load, and as many rows as the
    load counted (received - quarantined - duplicates dropped, recorded in its quarantine commit)."""

    @dg.asset_check(
        asset=bronze_key(spec.name),
        name="gx_bronze_gate",
        blocking=True,
        partitions_def=daily_partitions,
        description="Great Expectations, derived from the source declaration: columns, key and lineage not null, "
        "declared rules, row count = records received - quarantined - duplicates dropped; bronze and "
        "quarantine from the same load.",
    )
    def _gate(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
        # Imported here, where a gate runs: Great Expectations is heavy and the code location loads without it.
        from dagster_project.lib.bronze import engine
        from dagster_project.lib.bronze.contract import PARTITION_COLUMN
        from dagster_project.lib.quality import gates
        from dagster_project.lib.quality.gx_runner import validate_lake

        day, root = dt.date.fromisoformat(context.partition_key), lake.lake
        # A load of the partition committing while the gate reads gives a count from one load and rows from
        # another: read the load number again after validating, and check again if it moved.
        for _ in range(3):
            state = engine.partition_state(spec, root, day)
            if state.bronze_load is None:
                return _failed(
                    f"bronze.{spec.name} {day} holds no load of the engine: materialize the partition", state
                )
            refused = _pair_refused(context, spec, root, state)
            if refused is not None:
                return refused
            commit = engine.find_load_commit(spec, root, "quarantine", day, state.bronze_load)
            if commit is None or "loaded" not in commit.figures:
                return _failed(
                    f"bronze.{spec.name} {day}: the figures of load {state.bronze_load} are not in the last "
                    f"{engine.LOG_SEARCH_COMMITS} commits of quarantine.{spec.name}; materialize the partition again",
                    state,
                )
            suite = gates.bronze_gate(spec, commit.figures["loaded"])
            result = validate_lake(
                root,
                f"bronze.{spec.name}",
                suite.name,
                suite.expectations,
                predicate_sql=f"{PARTITION_COLUMN} = ?::DATE",
                params=[context.partition_key],
                sample_columns=list(suite.sample_columns),
            )
            if engine.partition_state(spec, root, day).bronze_load == state.bronze_load:
                break
        checked = gate_check_result(result)
        return checked.with_metadata(
            {**checked.metadata, "load": state.bronze_load, "load_run_id": commit.run_id or ""}
        )

    return _gate


def _failed(description: str, state: "PartitionState") -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={"bronze_load": state.bronze_load or 0, "quarantine_load": state.quarantine_load or 0},
    )


def _pair_refused(
    context: dg.AssetCheckExecutionContext, spec: SourceSpec, lake: "Lake", state: "PartitionState"
) -> dg.AssetCheckResult | None:
    """A failed result when the partition's bronze and quarantine come from two loads and the newer one is not
    still running (it then stopped between its two commits)."""
    from dagster_project.lib.bronze import engine

    if state.consistent:
        return None
    ahead = (
        engine.find_load_commit(spec, lake, "quarantine", state.business_date, state.quarantine_load)
        if state.quarantine_load is not None
        else None
    )
    run = context.instance.get_run_by_id(ahead.run_id) if ahead and ahead.run_id else None
    if run is not None and not run.is_finished and run.run_id != context.run.run_id:
        context.log.info(f"{state.describe()}: run {run.run_id} is loading the partition now; its gate checks it")
        return None
    return _failed(
        f"{state.describe()}; the load of run {ahead.run_id if ahead else 'unknown'} did not finish: "
        "materialize the partition again, which rewrites both tables",
        state,
    )
