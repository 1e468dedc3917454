import json
import time

import dagster as dg

from dagster_project.defs.sftp.assets import intake_job_name, intake_jobs, landing_key
from dagster_project.defs.sftp.resources import SftpResource
from dagster_project.lib.intake.sftp_inbox import plan_inbox, quarantine_remote
from dagster_project.lib.sources.naming import parse_file_name
from dagster_project.lib.sources.registry import source_for_file


@dg.sensor(
    name="sftp_inbox_sensor",
    jobs=intake_jobs,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests one intake run per complete partner file in the SFTP inbox.",
)
def sftp_inbox_sensor(context: dg.SensorEvaluationContext, sftp: SftpResource) -> dg.SensorResult:
    previous = {name: tuple(v) for name, v in json.loads(context.cursor or "{}").items()}
    layout = sftp.layout()
    observations: list[dg.AssetObservation] = []
    with sftp.client() as client:
        plan = plan_inbox(
            client.list_dir(layout.inbox),
            previous,
            now=time.time(),
            stable_seconds=sftp.stable_seconds,
        )
        for name, reason in plan.broken.items():
            quarantine_remote(client, layout, name, reason)
            context.log.warning(f"quarantined {name}: {reason}")
            spec = source_for_file(name)
            if spec is not None:
                observations.append(
                    dg.AssetObservation(asset_key=landing_key(spec), metadata={"rejected_file": name, "reason": reason})
                )
    run_requests = []
    for f in plan.ready:
        parsed = parse_file_name(f.name)
        run_requests.append(
            dg.RunRequest(
                # A re-upload (new size or mtime) gets a new run; landing then recognises content it already has.
                run_key=f"{f.name}:{f.size}:{f.mtime}",
                job_name=intake_job_name(parsed.source),
                partition_key=parsed.business_date,
                run_config={"ops": {f"landing__{parsed.source.name}": {"config": {"files": [f.name]}}}},
                tags={"medallion/file": f.name, "medallion/feed": parsed.source.name},
            )
        )
    return dg.SensorResult(
        run_requests=run_requests,
        cursor=json.dumps(plan.waiting, sort_keys=True),
        asset_events=observations,
        skip_reason=None if run_requests else f"{len(plan.waiting)} file(s) waiting to be complete",
    )


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(sensors=[sftp_inbox_sensor])
