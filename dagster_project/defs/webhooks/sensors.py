from collections import defaultdict

import dagster as dg

from dagster_project.defs.common.partitions import daily_partitions
from dagster_project.defs.webhooks.assets import INGEST_JOB_NAME, payment_events_ingest
from dagster_project.defs.webhooks.resources import InboxResource
from dagster_project.lib.bronze import payment_events
from dagster_project.lib.intake.inbox import InboxUnavailable

PAGE_SIZE = 1000
MAX_PAGES_PER_TICK = 50  # a backlog is worked through over several ticks instead of one long evaluation


@dg.sensor(
    name="payment_events_sensor",
    jobs=[payment_events_ingest],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests one bronze rebuild per event date touched by webhook events new in the inbox.",
)
def payment_events_sensor(context: dg.SensorEvaluationContext, inbox: InboxResource) -> dg.SensorResult:
    # The cursor is the last inbox id seen. The inbox makes ids visible in increasing order, so every
    # event committed later has a larger id and is read on a later tick.
    cursor = int(context.cursor or 0)
    newest_by_date: dict[str, int] = defaultdict(int)
    try:
        with inbox.open() as store:
            for _ in range(MAX_PAGES_PER_TICK):
                page = store.read_since(cursor, PAGE_SIZE, provider=payment_events.PROVIDER)
                for event in page:
                    day = event.event_date.isoformat()
                    newest_by_date[day] = max(newest_by_date[day], event.id)
                if page:
                    cursor = page[-1].id
                if len(page) < PAGE_SIZE:
                    break
    except InboxUnavailable as error:
        return dg.SensorResult(skip_reason=str(error), cursor=context.cursor)
    outside = [day for day in newest_by_date if not daily_partitions.has_partition_key(day)]
    for day in outside:
        # A date the partitions do not cover (an event created before the first partition or in the future)
        # cannot be requested; its events stay in the inbox and load with any later rebuild of that date.
        context.log.warning(f"event date {day} is outside the daily partitions; not requested")
        del newest_by_date[day]
    run_requests = [
        dg.RunRequest(
            # The newest inbox id of the date names the state being loaded: a new event for the date gets a
            # new run, a re-evaluation of the same events never does (and a rebuild is idempotent anyway).
            run_key=f"{payment_events.TABLE}:{day}:{newest}",
            job_name=INGEST_JOB_NAME,
            partition_key=day,
            tags={"medallion/feed": payment_events.TABLE, "medallion/inbox_max_id": str(newest)},
        )
        for day, newest in sorted(newest_by_date.items())
    ]
    return dg.SensorResult(
        run_requests=run_requests,
        cursor=str(cursor),
        skip_reason=None if run_requests else "no new webhook events in the inbox",
    )
