"""The inbox sensor: one outcome per inbox entry, decided from a listing (`lib/intake/sftp_inbox.plan_inbox`).

A tick only lists the inbox and asks for runs: a complete file is taken by its feed's intake job for the
partition of its date; a file that breaks the contract before it can be taken (its name, a date with no
partition) is moved to quarantine by the quarantine job. Every partition key is checked against the
partitions before a run is asked for, so no file can make a tick fail on the daemon's own check. What intake
leaves where it is (a directory, a link, a hidden name, an unknown feed) is reported once, in the tick's log
and as an observation of the inbox asset. A file whose run failed is asked for again (a new run key) after a
backoff, and quarantined with the reason after `intake_attempts` runs.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence

import dagster as dg

from dagster_project.defs.common.partitions import daily_partitions
from dagster_project.defs.sftp.assets import INBOX_KEY, QUARANTINE_JOB, intake_job_name
from dagster_project.defs.sftp.resources import SftpResource
from dagster_project.lib.intake.sftp_inbox import Cursor, Policy, Request, RunState, plan_inbox
from dagster_project.lib.sources.registry import SOURCES

KEY_TAG = "medallion/intake_key"  # on every run the sensor asks for: finds the run of a request
_FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def _run_state(instance: dg.DagsterInstance, request: Request) -> RunState | None:
    records = instance.get_run_records(dg.RunsFilter(tags={KEY_TAG: request.key}), limit=1)
    if not records:
        return None
    record = records[0]
    status = record.dagster_run.status
    return RunState(
        finished=status in _FINISHED,
        succeeded=status == dg.DagsterRunStatus.SUCCESS,
        ended_at=record.end_time,
        run_id=record.dagster_run.run_id,
    )


def _run_request(request: Request) -> dg.RunRequest:
    tags = {"medallion/file": request.name, KEY_TAG: request.key}
    if request.action == "quarantine":
        file = {"name": request.name, "size": request.size, "mtime": request.mtime, "reason": request.reason}
        return dg.RunRequest(
            run_key=request.key,
            job_name=QUARANTINE_JOB,
            run_config={"ops": {"quarantine_inbox_files": {"config": {"files": [file]}}}},
            tags=tags,
        )
    assert request.feed is not None and request.business_date is not None
    listed = {"name": request.name, "size": request.size, "mtime": request.mtime}
    return dg.RunRequest(
        run_key=request.key,
        job_name=intake_job_name(SOURCES[request.feed]),
        partition_key=request.business_date,
        run_config={"ops": {f"landing__{request.feed}": {"config": {"files": [request.name], "listed": [listed]}}}},
        tags={**tags, "medallion/feed": request.feed},
    )


def build_inbox_sensor(
    jobs: Sequence[dg.JobDefinition | dg.UnresolvedAssetJobDefinition],
    *,
    clock: Callable[[], float] = time.time,
    minimum_interval_seconds: int = 10,
) -> dg.SensorDefinition:
    """The sensor over the inbox, asking for runs of `jobs`; `clock` gives the time (tests give their own)."""

    @dg.sensor(
        name="sftp_inbox_sensor",
        jobs=list(jobs),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="One outcome per SFTP inbox entry: a run that takes or quarantines each complete file, "
        "a report for what is left there.",
    )
    def sftp_inbox_sensor(context: dg.SensorEvaluationContext, sftp: SftpResource) -> dg.SensorResult:
        now = clock()
        moment = dt.datetime.fromtimestamp(now, dt.UTC)
        keys = daily_partitions.get_partition_keys(current_time=moment)
        last = keys[-1] if keys else None
        policy = Policy(
            stable_seconds=sftp.stable_seconds,
            retry_attempts=sftp.intake_attempts,
            retry_backoff_seconds=sftp.intake_backoff_seconds,
            first_day=daily_partitions.start.date(),
            last_day=dt.date.fromisoformat(last) if last else daily_partitions.start.date() - dt.timedelta(days=1),
        )
        with sftp.client() as client:
            entries = client.list_entries(sftp.layout().inbox)
        plan = plan_inbox(
            entries,
            Cursor.from_json(context.cursor, now=now),
            now=now,
            policy=policy,
            run_state=lambda request: _run_state(context.instance, request),
        )
        for report in plan.reports:
            context.log.warning(f"left in the inbox: {report.name}: {report.reason}")
        observations = [
            dg.AssetObservation(
                asset_key=INBOX_KEY, metadata={"entry": r.name, "outcome": "reported", "reason": r.reason}
            )
            for r in plan.reports
        ]
        requests = [_run_request(r) for r in plan.requests]
        waiting = "; ".join(f"{name}: {why}" for name, why in list(plan.waiting.items())[:5])
        return dg.SensorResult(
            run_requests=requests,
            cursor=plan.cursor.to_json(),
            asset_events=observations,
            skip_reason=None
            if requests
            else f"{len(plan.waiting)} file(s) waiting" + (f" ({waiting})" if waiting else ""),
        )

    return sftp_inbox_sensor
