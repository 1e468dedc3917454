from collections import defaultdict

import dagster as dg

from dagster_project.defs.common.partitions import daily_partitions
from dagster_project.defs.webhooks.assets import ingest_job_name, ingest_jobs
from dagster_project.defs.webhooks.resources import InboxResource
from dagster_project.lib.sources.registry import SOURCES, source_for_provider

PAGE_SIZE = 1000
MAX_PAGES_PER_TICK = 50  # a backlog is worked through over several ticks instead of one long evaluation


@dg.sensor(
    name="webhook_events_sensor",
    jobs=ingest_jobs,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests one bronze rebuild per webhook source and event date touched by events new in the inbox.",
)
def webhook_events_sensor(context: dg.SensorEvaluationContext, inbox: InboxResource) -> dg.SensorResult:
    from dagster_project.lib.intake.inbox import InboxUnavailable  # SQLAlchemy: loaded when the sensor runs

    # The cursor is the last inbox id seen. The inbox makes ids visible in increasing order, so every
    # event committed later has a larger id and is read on a later tick.
    cursor = int(context.cursor or 0)
    newest: dict[tuple[str, str], int] = defaultdict(int)  # (source, date) -> newest inbox id
    try:
        with inbox.open() as store:
            for _ in range(MAX_PAGES_PER_TICK):
                page = store.read_since(cursor, PAGE_SIZE)
                for event in page:
                    spec = source_for_provider(event.provider)
                    if spec is None:
                        # The receiver only accepts declared providers; an event of another one was stored
                        # by an older deployment or by hand and has no bronze table to go to.
                        context.log.warning(f"inbox event {event.id}: provider {event.provider!r} is not a source")
                        continue
                    key = (spec.name, event.event_date.isoformat())
                    newest[key] = max(newest[key], event.id)
                if page:
                    cursor = page[-1].id
                if len(page) < PAGE_SIZE:
                    break
    except InboxUnavailable as error:
        return dg.SensorResult(skip_reason=str(error), cursor=context.cursor)
    run_requests = []
    for (source, day), inbox_id in sorted(newest.items()):
        if not daily_partitions.has_partition_key(day):
            # A date the partitions do not cover (an event created before the first partition or in the future)
            # cannot be requested; its events stay in the inbox and load with any later rebuild of that date.
            context.log.warning(f"{source}: event date {day} is outside the daily partitions; not requested")
            continue
        spec = SOURCES[source]
        run_requests.append(
            dg.RunRequest(
                # The newest inbox id of the date names the state being loaded: a new event for the date gets
                # a new run, a re-evaluation of the same events never does (and a rebuild is idempotent anyway).
                run_key=f"{source}:{day}:{inbox_id}",
                job_name=ingest_job_name(spec),
                partition_key=day,
                tags={
                    "medallion/source": source,
                    "medallion/provider": spec.webhook.provider,
                    "medallion/inbox_max_id": str(inbox_id),
                },
            )
        )
    return dg.SensorResult(
        run_requests=run_requests,
        cursor=str(cursor),
        skip_reason=None if run_requests else "no new webhook events in the inbox",
    )


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(sensors=[webhook_events_sensor])
