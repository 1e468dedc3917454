"""PSP webhooks: the durable inbox -> bronze `payment_events` Delta (+ quarantine), one partition per event date."""

import json

import dagster as dg

from dagster_project.defs.common.partitions import daily_partitions
from dagster_project.defs.common.resources import LakeResource
from dagster_project.defs.webhooks.resources import InboxResource
from dagster_project.lib import payment_events

INBOX_KEY = dg.AssetKey(["landing", payment_events.TABLE])
BRONZE_KEY = dg.AssetKey(["bronze", payment_events.TABLE])
QUARANTINE_KEY = dg.AssetKey(["quarantine", payment_events.TABLE])
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
    specs=[
        dg.AssetSpec(
            BRONZE_KEY,
            deps=[INBOX_KEY],
            group_name="bronze",
            description="PSP webhook events, typed, with lineage columns; one row per event id.",
            kinds={"delta"},
            owners=OWNERS,
            metadata={"primary_key": list(payment_events.KEY), "schema_version": payment_events.SCHEMA_VERSION},
        ),
        dg.AssetSpec(
            QUARANTINE_KEY,
            deps=[INBOX_KEY],
            group_name="bronze",
            description="PSP webhook events that broke the edge contract, with the raw body and every reason.",
            kinds={"delta"},
            owners=OWNERS,
        ),
    ],
    partitions_def=daily_partitions,
)
def bronze_payment_events(context: dg.AssetExecutionContext, inbox: InboxResource, lake: LakeResource):
    business_date = context.partition_key
    with inbox.open() as store:
        load = payment_events.rebuild_partition(
            store,
            business_date,
            bronze_path=lake.bronze_path(payment_events.TABLE),
            quarantine_path=lake.quarantine_path(payment_events.TABLE),
            run_id=context.run.run_id,
        )
    if load.quarantined:
        context.log.warning(
            f"{payment_events.TABLE} {business_date}: {load.quarantined} of {load.received} events quarantined: "
            + json.dumps(dict(load.reasons))
        )
    if load.duplicates:
        context.log.warning(f"{payment_events.TABLE} {business_date}: {load.duplicates} repeated event ids skipped")
    yield dg.MaterializeResult(
        asset_key=BRONZE_KEY,
        metadata={
            "dagster/row_count": load.loaded,
            "received": load.received,
            "loaded": load.loaded,
            "quarantined": load.quarantined,
            "duplicates_skipped": load.duplicates,
            "unknown_event_types": load.unknown_types,
            "event_types": dg.MetadataValue.json(dict(sorted(load.event_types.items()))),
            "inbox_max_id": load.max_inbox_id,
            "schema_version": payment_events.SCHEMA_VERSION,
            "table": dg.MetadataValue.path(str(lake.bronze_path(payment_events.TABLE))),
        },
    )
    yield dg.MaterializeResult(
        asset_key=QUARANTINE_KEY,
        metadata={
            "dagster/row_count": load.quarantined,
            "reasons": dg.MetadataValue.json(dict(load.reasons)),
            "table": dg.MetadataValue.path(str(lake.quarantine_path(payment_events.TABLE))),
        },
    )


INGEST_JOB_NAME = "payment_events_ingest"

payment_events_ingest = dg.define_asset_job(
    INGEST_JOB_NAME,
    selection=dg.AssetSelection.assets(BRONZE_KEY, QUARANTINE_KEY),
    description="Rebuild the bronze payment_events partition of an event date from the webhook inbox.",
)

defs = dg.Definitions(assets=[webhook_inbox, bronze_payment_events], jobs=[payment_events_ingest])
