"""Every source's bronze assets, built from its declaration: the bronze + quarantine Delta pair of one
partition load, the figures it reports, and its blocking Great Expectations gate. Sources differ only in
the reader that opens what landed for the date (`lib/bronze/readers/`)."""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import dagster as dg

from dagster_project.defs.common.gates import gate_check_result, latest_partition_metadata
from dagster_project.defs.common.partitions import daily_partitions
from dagster_project.defs.common.resources import LakeResource
from dagster_project.lib.sources.spec import SourceSpec

if TYPE_CHECKING:  # Arrow and the engine load where a partition is loaded, not with the code location
    from dagster_project.lib.bronze.engine import LoadResult, Reader

# Opens the reader of one partition with the run's resources (an inbox connection, the lake's landing zone).
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
    yield dg.MaterializeResult(
        asset_key=bronze_key(spec.name),
        metadata={
            "dagster/row_count": load.loaded,
            "received": load.received,
            "loaded": load.loaded,
            "quarantined": load.quarantined,
            "duplicates": load.duplicates,
            **{name: _metadata_value(value) for name, value in load.details.items()},
            "schema_version": spec.schema_version,
            "table": dg.MetadataValue.path(str(lake.bronze_path(spec.name))),
        },
    )
    yield dg.MaterializeResult(
        asset_key=quarantine_key(spec.name),
        metadata={
            "dagster/row_count": load.quarantined,
            "reasons": dg.MetadataValue.json(dict(load.reasons)),
            "table": dg.MetadataValue.path(str(lake.quarantine_path(spec.name))),
        },
    )


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
                metadata={"primary_key": list(spec.key), "schema_version": spec.schema_version},
            ),
            dg.AssetSpec(
                quarantine_key(spec.name),
                deps=[upstream],
                group_name="bronze",
                description=f"Records of {spec.name} that broke its contract, with the raw record and every reason.",
                kinds={"delta"},
                owners=owners,
            ),
        ],
        partitions_def=daily_partitions,
        required_resource_keys={"lake", *required_resource_keys},
    )
    def _bronze(context: dg.AssetExecutionContext) -> Iterator[dg.MaterializeResult]:
        from dagster_project.lib.bronze import engine

        lake: LakeResource = context.resources.lake
        with open_reader(context, spec) as reader:
            load = engine.load_partition(
                spec,
                reader,
                bronze_path=lake.bronze_path(spec.name),
                quarantine_path=lake.quarantine_path(spec.name),
                run_id=context.run.run_id,
            )
        yield from _results(context, spec, load, lake)

    return _bronze, build_bronze_gate(spec)


def build_bronze_gate(spec: SourceSpec) -> dg.AssetChecksDefinition:
    """The blocking GX gate of one bronze partition, derived from the declaration. Its expected row count is
    what the partition's load reported: received - quarantined - duplicates dropped."""

    @dg.asset_check(
        asset=bronze_key(spec.name),
        name="gx_bronze_gate",
        blocking=True,
        partitions_def=daily_partitions,
        description="Great Expectations, derived from the source declaration: columns, key and lineage not null, "
        "declared rules, row count = records received - quarantined - duplicates dropped.",
    )
    def _gate(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
        # Imported here, where a gate runs: Great Expectations is heavy and the code location loads without it.
        from dagster_project.lib.bronze.contract import PARTITION_COLUMN
        from dagster_project.lib.quality import gates
        from dagster_project.lib.quality.gx_runner import validate_lake

        partition = context.partition_key
        metadata = latest_partition_metadata(context.instance, bronze_key(spec.name), partition)
        received, quarantined, duplicates = (int(metadata.get(k, 0)) for k in ("received", "quarantined", "duplicates"))
        suite = gates.bronze_gate(spec, received - quarantined - duplicates)
        result = validate_lake(
            lake.lake,
            f"bronze.{spec.name}",
            suite.name,
            suite.expectations,
            predicate_sql=f"{PARTITION_COLUMN} = ?::DATE",
            params=[partition],
            sample_columns=list(suite.sample_columns),
        )
        return gate_check_result(result)

    return _gate
