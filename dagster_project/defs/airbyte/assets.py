"""Shop orders through Airbyte: the connection sync, then bronze orders (+ quarantine) from what it landed."""

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import dagster as dg

from dagster_project import settings
from dagster_project.defs.airbyte.resources import AirbyteResource
from dagster_project.defs.common import catalog
from dagster_project.defs.common.bronze import bronze_key, build_bronze_assets, quarantine_key
from dagster_project.defs.common.resources import LakeResource
from dagster_project.lib.sources.registry import ORDERS
from dagster_project.lib.sources.spec import SourceSpec

if TYPE_CHECKING:
    from dagster_project.lib.bronze.engine import Reader

SYNC_KEY = dg.AssetKey(["airbyte", "shop_orders_sync"])
BRONZE_KEY = bronze_key(ORDERS.name)
QUARANTINE_KEY = quarantine_key(ORDERS.name)
OWNERS = list(ORDERS.owners)


@dg.asset(
    key=SYNC_KEY,
    group_name="landing",
    description="Airbyte sync of the shop connection; its destination writes orders into the landing zone.",
    kinds={"airbyte"},
    owners=OWNERS,
)
def shop_orders_sync(
    context: dg.AssetExecutionContext, airbyte: AirbyteResource, lake: LakeResource
) -> dg.MaterializeResult:
    # Imported where a sync runs: the Airbyte SDK and DuckDB are not needed to load the code location.
    from dagster_project.lib.bronze.readers.airbyte_records import business_dates_in, stream_folder
    from dagster_project.lib.clients.airbyte import AirbyteSyncError
    from dagster_project.lib.intake.airbyte_destination import record_files

    the_lake = lake.lake
    folder = stream_folder(ORDERS, the_lake)
    before = {f.name for f in record_files(folder)}
    try:
        result = airbyte.sync()
    except AirbyteSyncError as exc:
        # The message names the connection, job and status; credentials never reach it.
        raise dg.Failure(
            description=str(exc),
            metadata={"connection_id": exc.connection_id, "job_id": exc.job_id, "status": exc.status},
        ) from exc
    new_files = [f for f in record_files(folder) if f.name not in before]
    dates = business_dates_in(ORDERS, the_lake, new_files) if new_files else []
    context.log.info(
        f"Airbyte job {result.job_id} {result.status}: {result.rows_synced} rows, "
        f"{len(new_files)} new file(s) for {len(dates)} business date(s)"
    )
    return dg.MaterializeResult(
        metadata={
            "connection_id": result.connection_id,
            "job_id": result.job_id,
            "status": result.status,
            "rows_synced": result.rows_synced,
            "bytes_synced": result.bytes_synced,
            "duration_seconds": round(result.duration_seconds, 3),
            "attached_to_running_job": result.attached,
            "new_files": dg.MetadataValue.json([f.name for f in new_files]),
            "business_dates": dg.MetadataValue.json(dates),
        }
    )


def _open_landed_records(context: dg.AssetExecutionContext, spec: SourceSpec) -> "AbstractContextManager[Reader]":
    from dagster_project.lib.bronze.readers.airbyte_records import AirbyteRecordsReader

    return nullcontext(AirbyteRecordsReader(spec, context.resources.lake.lake, context.partition_key))


bronze_orders, bronze_orders_gate = build_bronze_assets(ORDERS, upstream=SYNC_KEY, open_reader=_open_landed_records)

sync_job = dg.define_asset_job(
    "shop_orders_sync",
    selection=dg.AssetSelection.assets(SYNC_KEY),
    description="Run the Airbyte sync of the shop connection.",
)
bronze_job = dg.define_asset_job(
    "shop_orders_bronze",
    selection=dg.AssetSelection.assets(BRONZE_KEY, QUARANTINE_KEY),
    description="Rebuild bronze orders (and quarantine) for a business date from the landed Airbyte output.",
)


# Shown in the UI beside a schedule or sensor that is off because nothing is configured to sync with.
AIRBYTE_OFF = (
    "Off: no Airbyte server is configured. Set MEDALLION_AIRBYTE_SERVER_URL, MEDALLION_AIRBYTE_CONNECTION_ID "
    "and the client credentials, then reload the code location."
)


def build_sync_schedule(configured: bool) -> dg.ScheduleDefinition:
    """Hourly sync; running by default only where an Airbyte server is configured."""
    return dg.ScheduleDefinition(
        name="shop_orders_sync_hourly",
        job=sync_job,
        cron_schedule="15 * * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING if configured else dg.DefaultScheduleStatus.STOPPED,
        description="Syncs the shop connection every hour." + ("" if configured else f" {AIRBYTE_OFF}"),
    )


def build_landed_sensor(configured: bool) -> dg.SensorDefinition:
    """After each sync, rebuild the bronze partitions of the business dates its new files touch."""

    @dg.asset_sensor(
        asset_key=SYNC_KEY,
        job=bronze_job,
        name="shop_orders_landed_sensor",
        default_status=dg.DefaultSensorStatus.RUNNING if configured else dg.DefaultSensorStatus.STOPPED,
        description="Rebuilds bronze orders for the business dates each sync landed."
        + ("" if configured else f" {AIRBYTE_OFF}"),
    )
    def shop_orders_landed_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
        materialization = asset_event.asset_materialization
        dates = materialization.metadata.get("business_dates") if materialization else None
        for business_date in (dates.value if dates else None) or []:
            yield dg.RunRequest(run_key=f"{asset_event.run_id}:{business_date}", partition_key=business_date)

    return shop_orders_landed_sensor


@dg.definitions
def defs() -> dg.Definitions:
    configured = bool(settings.airbyte_server_url())
    return dg.Definitions(
        assets=[
            catalog.with_code_references(shop_orders_sync, lambda _: [catalog.source_declaration(ORDERS.name)]),
            catalog.with_lake_uri(bronze_orders),
        ],
        asset_checks=[bronze_orders_gate],
        jobs=[sync_job, bronze_job],
        schedules=[build_sync_schedule(configured)],
        sensors=[build_landed_sensor(configured)],
    )
