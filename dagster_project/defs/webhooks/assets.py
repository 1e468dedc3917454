"""Webhooks: the durable inbox -> bronze Delta (+ quarantine), one source per provider, one partition per event date."""

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from dagster_project.defs.common import catalog
from dagster_project.defs.common.bronze import bronze_key, build_bronze_assets, quarantine_key
from dagster_project.defs.common.partitions import daily_partitions
from dagster_project.lib.sources.registry import webhook_sources
from dagster_project.lib.sources.spec import SourceSpec

if TYPE_CHECKING:
    from dagster_project.lib.bronze.engine import Reader

INBOX_BATCH_EVENTS = 5000


def inbox_key(spec: SourceSpec) -> dg.AssetKey:
    return dg.AssetKey(["landing", spec.name])


def ingest_job_name(spec: SourceSpec) -> str:
    return f"{spec.name}_ingest"


# The inbox is written by the webhook receiver, a service of its own (not imported with the code location).
RECEIVER = Path(__file__).resolve().parents[2] / "services" / "webhook_receiver.py"


def build_inbox_asset(spec: SourceSpec) -> dg.AssetSpec:
    inbox = dg.AssetSpec(
        inbox_key(spec),
        group_name="landing",
        description=f"Verified {spec.webhook.provider} webhook deliveries, kept byte for byte by the receiver.",
        kinds={"webhook"},
        owners=list(spec.owners),
    )
    references = [catalog.file_reference(RECEIVER, label="Webhook receiver"), catalog.source_declaration(spec.name)]
    return catalog.with_code_references(inbox, lambda _: references)


@contextmanager
def _open_inbox_events(context: dg.AssetExecutionContext, spec: SourceSpec) -> "Iterator[Reader]":
    from dagster_project.lib.bronze.readers.webhook_events import WebhookEventsReader

    day = dt.date.fromisoformat(context.partition_key)
    with context.resources.inbox.open() as store:
        events = store.iter_for_dates(spec.webhook.provider, [day], batch_size=INBOX_BATCH_EVENTS)
        yield WebhookEventsReader(spec, events, context.partition_key)


def build_conflicts_check(spec: SourceSpec) -> dg.AssetChecksDefinition:
    """Warns on a partition whose events were delivered again under the same id with a different body."""

    @dg.asset_check(
        asset=bronze_key(spec.name),
        name="inbox_conflicts",
        partitions_def=daily_partitions,
        required_resource_keys={"inbox"},
        description="Deliveries that reused an event id of this partition with a different body. Bronze keeps "
        "the first body; the others wait in the inbox's webhook_conflicts table for someone to review.",
    )
    def _conflicts(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        day = dt.date.fromisoformat(context.partition_key)
        with context.resources.inbox.open() as store:
            conflicts = store.conflicts_for_dates(spec.webhook.provider, [day])
        event_ids = sorted({c.event_id for c in conflicts})
        return dg.AssetCheckResult(
            passed=not conflicts,
            severity=dg.AssetCheckSeverity.WARN,
            description=None
            if not conflicts
            else f"{len(event_ids)} event id(s) of {spec.webhook.provider} delivered again with a different body",
            metadata={
                "conflicts": len(conflicts),
                "event_ids": dg.MetadataValue.json(event_ids[:100]),
                "conflict_ids": dg.MetadataValue.json([c.id for c in conflicts][:100]),
                "where": "webhook_conflicts table of the webhook inbox (stored and received SHA-256, received body)",
            },
        )

    return _conflicts


conflict_checks = [build_conflicts_check(spec) for spec in webhook_sources()]


def build_ingest_job(spec: SourceSpec) -> dg.JobDefinition:
    return dg.define_asset_job(
        ingest_job_name(spec),
        selection=dg.AssetSelection.assets(bronze_key(spec.name), quarantine_key(spec.name)),
        description=f"Rebuild the bronze {spec.name} partition of an event date from the webhook inbox.",
    )


ingest_jobs = [build_ingest_job(spec) for spec in webhook_sources()]


bronze = {
    spec.name: build_bronze_assets(
        spec, upstream=inbox_key(spec), open_reader=_open_inbox_events, required_resource_keys=frozenset({"inbox"})
    )
    for spec in webhook_sources()
}


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[
            *(build_inbox_asset(spec) for spec in webhook_sources()),
            *(catalog.with_lake_uri(a) for a, _ in bronze.values()),
        ],
        asset_checks=[*(gate for _, gate in bronze.values()), *conflict_checks],
        jobs=ingest_jobs,
    )
