import json
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dagster as dg

from dagster_project.defs.common.partitions import daily_partitions
from dagster_project.defs.webhooks.assets import ingest_job_name, ingest_jobs
from dagster_project.defs.webhooks.resources import InboxResource
from dagster_project.lib.sources.registry import SOURCES, source_for_provider

if TYPE_CHECKING:  # SQLAlchemy loads when the sensor runs, not with the code location
    from dagster_project.lib.intake.inbox import Inbox, Position

PAGE_SIZE = 1000
MAX_PAGES_PER_TICK = 50  # a backlog is worked through over several ticks instead of one long evaluation


@dataclass
class _Cursor:
    """Where the sensor has read up to, in the inbox's commit order: events, and same-id conflicts."""

    events: "Position"
    conflicts: "Position"

    @classmethod
    def parse(cls, text: str | None) -> "_Cursor":
        from dagster_project.lib.intake.inbox import Position

        if not text:
            return cls(Position(), Position())
        if not text.startswith("{"):  # a cursor kept before conflicts were followed: the last inbox id
            return cls(Position.parse(text), Position())
        saved = json.loads(text)
        return cls(Position.parse(saved["events"]), Position.parse(saved["conflicts"]))

    def __str__(self) -> str:
        return json.dumps({"events": str(self.events), "conflicts": str(self.conflicts)})


def _pending_partitions(
    context: dg.SensorEvaluationContext, store: "Inbox", cursor: _Cursor
) -> dict[tuple[str, str, str], int]:
    """(source, partition, why) -> newest inbox id, or conflict id, among what was committed since `cursor`,
    which moves past it."""
    newest: dict[tuple[str, str, str], int] = defaultdict(int)
    _new_events(context, store, cursor, newest)
    _new_conflicts(context, store, cursor, newest)
    return newest


def _new_events(
    context: dg.SensorEvaluationContext, store: "Inbox", cursor: _Cursor, newest: dict[tuple[str, str, str], int]
) -> None:
    """New events, by source and partition. Stops before an event filed under a date this clock has not reached
    yet (the receiver's clock runs ahead), so that event is read again next tick rather than passed over."""
    for _ in range(MAX_PAGES_PER_TICK):
        page, position = store.read_page(cursor.events, PAGE_SIZE)
        for event in page:
            spec = source_for_provider(event.provider)
            day = event.event_date.isoformat()
            if spec is None:
                # The receiver only accepts declared providers; an event of another one was stored by an older
                # deployment or by hand and has no bronze table to go to.
                context.log.warning(f"inbox event {event.id}: provider {event.provider!r} is not a source")
            elif not daily_partitions.has_partition_key(day):
                if daily_partitions.start.date() <= event.event_date <= event.received_at.date():
                    # the day it was received has not begun on this clock yet: stop before it, read it next tick
                    return
                # before the first business date (an event stored before MEDALLION_FIRST_BUSINESS_DATE was moved
                # later): it stays in the inbox, and reaches bronze once its date is a partition again
                context.log.warning(
                    f"inbox event {event.id} ({spec.name}): date {day} has no partition (they start on "
                    f"{daily_partitions.start.date()})"
                )
            else:
                if event.redated:
                    context.log.warning(
                        f"inbox event {event.id} ({spec.name}): created on {event.event_created_at.date()}, a date "
                        f"outside the partitions; filed under {day}, the day it was received"
                    )
                key = (spec.name, day, "events")
                newest[key] = max(newest[key], event.id)
            cursor.events = event.position
        cursor.events = position
        if len(page) < PAGE_SIZE:
            return


def _new_conflicts(
    context: dg.SensorEvaluationContext, store: "Inbox", cursor: _Cursor, newest: dict[tuple[str, str, str], int]
) -> None:
    for _ in range(MAX_PAGES_PER_TICK):
        conflicts, position = store.read_conflicts_page(cursor.conflicts, PAGE_SIZE)
        for conflict in conflicts:
            spec = source_for_provider(conflict.provider)
            if spec is None or conflict.event_date is None:
                continue
            context.log.warning(
                f"inbox conflict {conflict.id} ({spec.name}): event {conflict.event_id} was delivered again with "
                f"a different body; the first body is kept"
            )
            key = (spec.name, conflict.event_date.isoformat(), "conflicts")
            newest[key] = max(newest[key], conflict.id)
        cursor.conflicts = position
        if len(conflicts) < PAGE_SIZE:
            return


@dg.sensor(
    name="webhook_events_sensor",
    jobs=ingest_jobs,
    # A tick is one query of the inbox: every 10 s keeps it from being most of the time from a POST to bronze.
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests one bronze rebuild per webhook source and event date touched by events new in the inbox, "
    "or by a delivery that reused an event id with a different body (the rebuild's conflicts check shows it).",
)
def webhook_events_sensor(context: dg.SensorEvaluationContext, inbox: InboxResource) -> dg.SensorResult:
    from dagster_project.lib.intake.inbox import InboxUnavailable  # SQLAlchemy: loaded when the sensor runs

    # The cursor follows the inbox's commit order, so every event committed later, by any receiver, is read
    # on a later tick, exactly once.
    cursor = _Cursor.parse(context.cursor)
    try:
        with inbox.open() as store:
            pending = _pending_partitions(context, store, cursor)
    except InboxUnavailable as error:
        return dg.SensorResult(skip_reason=str(error), cursor=context.cursor)
    run_requests = []
    for (source, day, why), newest_id in sorted(pending.items()):
        spec = SOURCES[source]
        run_requests.append(
            dg.RunRequest(
                # The newest inbox id of the date names the state being loaded: a new event for the date gets
                # a new run, a re-evaluation of the same events never does (and a rebuild is idempotent anyway).
                run_key=f"{source}:{day}:{newest_id}" if why == "events" else f"{source}:{day}:conflict:{newest_id}",
                job_name=ingest_job_name(spec),
                partition_key=day,
                tags={
                    "medallion/source": source,
                    "medallion/provider": spec.webhook.provider,
                    "medallion/inbox_max_id" if why == "events" else "medallion/inbox_conflict_id": str(newest_id),
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
