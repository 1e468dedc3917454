"""PSP webhooks: the durable inbox -> bronze `payment_events` Delta (+ quarantine), one partition per event date."""

import dagster as dg

from dagster_project.defs.common.bronze import bronze_key, bronze_results, bronze_specs, quarantine_key
from dagster_project.defs.common.partitions import daily_partitions
from dagster_project.defs.common.resources import LakeResource
from dagster_project.defs.webhooks.resources import InboxResource
from dagster_project.lib.bronze import payment_events

INBOX_KEY = dg.AssetKey(["landing", payment_events.TABLE])
BRONZE_KEY = bronze_key(payment_events.TABLE)
QUARANTINE_KEY = quarantine_key(payment_events.TABLE)
OWNERS = ["team:payments-data"]

webhook_inbox = dg.AssetSpec(
    INBOX_KEY,
    group_name="landing",
    description="Verified PSP webhook deliveries, committed byte for byte by the webhook receiver.",
    kinds={"webhook"},
    owners=OWNERS,
)


@dg.multi_asset(
    name="bronze_payment_events",
    specs=bronze_specs(
        payment_events.TABLE,
        upstream=INBOX_KEY,
        description="PSP webhook events, typed, with lineage columns; one row per event id.",
        quarantine_description="PSP webhook events that broke the edge contract, with the raw body and every reason.",
        owners=OWNERS,
        primary_key=payment_events.KEY,
        schema_version=payment_events.SCHEMA_VERSION,
    ),
    partitions_def=daily_partitions,
)
def bronze_payment_events(context: dg.AssetExecutionContext, inbox: InboxResource, lake: LakeResource):
    with inbox.open() as store:
        load = payment_events.rebuild_partition(
            store,
            context.partition_key,
            bronze_path=lake.bronze_path(payment_events.TABLE),
            quarantine_path=lake.quarantine_path(payment_events.TABLE),
            run_id=context.run.run_id,
        )
    if load.duplicates:
        context.log.warning(
            f"{payment_events.TABLE} {context.partition_key}: {load.duplicates} repeated event ids skipped"
        )
    yield from bronze_results(
        context,
        payment_events.TABLE,
        load,
        lake,
        schema_version=payment_events.SCHEMA_VERSION,
        metadata={
            "duplicates_skipped": load.duplicates,
            "unknown_event_types": load.unknown_types,
            "event_types": dg.MetadataValue.json(dict(sorted(load.event_types.items()))),
            "inbox_max_id": load.max_inbox_id,
        },
    )


INGEST_JOB_NAME = "payment_events_ingest"

payment_events_ingest = dg.define_asset_job(
    INGEST_JOB_NAME,
    selection=dg.AssetSelection.assets(BRONZE_KEY, QUARANTINE_KEY),
    description="Rebuild the bronze payment_events partition of an event date from the webhook inbox.",
)

defs = dg.Definitions(assets=[webhook_inbox, bronze_payment_events], jobs=[payment_events_ingest])
