"""What every bronze source shares: its pair of Delta assets (bronze + quarantine), the results a partition
load reports, and its blocking Great Expectations gate. The sources differ only in how they read."""

import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import dagster as dg

from dagster_project.defs.common.gates import gate_check_result, latest_partition_metadata
from dagster_project.defs.common.partitions import daily_partitions
from dagster_project.defs.common.resources import LakeResource
from dagster_project.lib.bronze.contract import PARTITION_COLUMN
from dagster_project.lib.quality.gates import Gate
from dagster_project.lib.quality.gx_runner import validate_delta


class PartitionLoad(Protocol):
    received: int
    loaded: int
    quarantined: int
    reasons: Counter[str]


def bronze_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["bronze", table])


def quarantine_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["quarantine", table])


def bronze_specs(
    table: str,
    *,
    upstream: dg.AssetKey,
    description: str,
    quarantine_description: str,
    owners: Sequence[str],
    primary_key: Sequence[str],
    schema_version: int,
) -> list[dg.AssetSpec]:
    return [
        dg.AssetSpec(
            bronze_key(table),
            deps=[upstream],
            group_name="bronze",
            description=description,
            kinds={"delta"},
            owners=list(owners),
            metadata={"primary_key": list(primary_key), "schema_version": schema_version},
        ),
        dg.AssetSpec(
            quarantine_key(table),
            deps=[upstream],
            group_name="bronze",
            description=quarantine_description,
            kinds={"delta"},
            owners=list(owners),
        ),
    ]


def bronze_results(
    context: dg.AssetExecutionContext,
    table: str,
    load: PartitionLoad,
    lake: LakeResource,
    *,
    schema_version: int,
    metadata: Mapping[str, Any] | None = None,
) -> Iterator[dg.MaterializeResult]:
    """The bronze and quarantine materializations of one partition load (received = loaded + quarantined
    + whatever `metadata` says was dropped as a duplicate)."""
    if load.quarantined:
        context.log.warning(
            f"{table} {context.partition_key}: {load.quarantined} of {load.received} records quarantined: "
            + json.dumps(dict(load.reasons))
        )
    yield dg.MaterializeResult(
        asset_key=bronze_key(table),
        metadata={
            "dagster/row_count": load.loaded,
            "received": load.received,
            "loaded": load.loaded,
            "quarantined": load.quarantined,
            **(metadata or {}),
            "schema_version": schema_version,
            "table": dg.MetadataValue.path(str(lake.bronze_path(table))),
        },
    )
    yield dg.MaterializeResult(
        asset_key=quarantine_key(table),
        metadata={
            "dagster/row_count": load.quarantined,
            "reasons": dg.MetadataValue.json(dict(load.reasons)),
            "table": dg.MetadataValue.path(str(lake.quarantine_path(table))),
        },
    )


def build_bronze_gate(
    table: str,
    gate: Callable[[int], Gate],
    *,
    description: str,
    dropped: Sequence[str] = (),
) -> dg.AssetChecksDefinition:
    """The blocking GX gate of one bronze partition. Its expected row count is what the partition's load
    reported as received, minus quarantined, minus the metadata counts named in `dropped`."""

    @dg.asset_check(
        asset=bronze_key(table),
        name="gx_bronze_gate",
        blocking=True,
        partitions_def=daily_partitions,
        description=description,
    )
    def _gate(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
        partition = context.partition_key
        metadata = latest_partition_metadata(context.instance, bronze_key(table), partition)
        expected = int(metadata.get("received", 0)) - int(metadata.get("quarantined", 0))
        expected -= sum(int(metadata.get(name, 0)) for name in dropped)
        suite = gate(expected)
        result = validate_delta(
            lake.bronze_path(table),
            suite.name,
            suite.expectations,
            predicate_sql=f"{PARTITION_COLUMN} = ?::DATE",
            params=[partition],
            sample_columns=list(suite.sample_columns),
        )
        return gate_check_result(result)

    return _gate
