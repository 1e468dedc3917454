"""The `retention` job: each layer's retention (lib/retention.py, and Dagster's run history), one step per
layer, so that one unreachable place (the SFTP server, say) does not keep the others from theirs. Each step's
output carries its receipt: counts and bytes per table, feed or folder, never a file's content or a value.
Scheduled daily and running by default: nothing else expires anything."""

import dagster as dg
from pydantic import Field

from dagster_project import settings
from dagster_project.defs.common.resources import LakeResource
from dagster_project.defs.retention.resources import RetentionResource
from dagster_project.lib.retention import Removal

JOB = "retention"


class RetentionRun(dg.Config):
    dry_run: bool = Field(default=False, description="Report what would be removed; remove nothing.")


def _receipt(context: dg.OpExecutionContext, removal: Removal) -> dg.Output:
    """The step's output with the receipt as metadata; a failure (with the same receipt) if an item failed."""
    receipt = removal.receipt()
    metadata: dict[str, dg.RawMetadataValue] = {
        "kept": receipt["kept"],
        "dry_run": receipt["dry_run"],
        **{name: dg.MetadataValue.int(value) for name, value in sorted(receipt["counts"].items())},
        "bytes": dg.MetadataValue.int(receipt["bytes"]),
        "per_item": dg.MetadataValue.json(receipt["per_item"]),
    }
    verb = "would remove" if removal.dry_run else "removed"
    counts = ", ".join(f"{v} {k}" for k, v in sorted(receipt["counts"].items())) or "nothing"
    context.log.info(f"{removal.layer} (kept {removal.kept}): {verb} {counts}, {receipt['bytes']} bytes")
    if removal.errors:
        raise dg.Failure(
            description=f"{removal.layer}: {len(removal.errors)} item(s) failed: "
            + "; ".join(f"{item}: {error}" for item, error in sorted(removal.errors.items())),
            metadata={**metadata, "errors": dg.MetadataValue.json(receipt["errors"])},
        )
    return dg.Output(None, metadata=metadata)


@dg.op(out=dg.Out(dg.Nothing), description="Vacuums every Delta table, checkpoints it and cleans its log.")
def vacuum_delta_tables(
    context: dg.OpExecutionContext, config: RetentionRun, lake: LakeResource, retention: RetentionResource
):
    from dagster_project.lib.retention import vacuum_tables

    return _receipt(context, vacuum_tables(lake.lake, retention.delta_versions_hours, dry_run=config.dry_run))


@dg.op(out=dg.Out(dg.Nothing), description="Deletes quarantine partitions older than the retention.")
def expire_quarantine_rows(
    context: dg.OpExecutionContext, config: RetentionRun, lake: LakeResource, retention: RetentionResource
):
    from dagster_project.lib.retention import expire_quarantine

    return _receipt(context, expire_quarantine(lake.lake, retention.quarantine_days, dry_run=config.dry_run))


@dg.op(
    out=dg.Out(dg.Nothing),
    description="Removes landing partitions older than the retention (off by default), leaving a marker.",
)
def expire_landing_partitions(
    context: dg.OpExecutionContext, config: RetentionRun, lake: LakeResource, retention: RetentionResource
):
    from dagster_project.lib.retention import expire_landing

    return _receipt(context, expire_landing(lake.lake, retention.landing_days, dry_run=config.dry_run))


@dg.op(out=dg.Out(dg.Nothing), description="Removes what interrupted landings left under landing/_uploads.")
def clear_landing_uploads(
    context: dg.OpExecutionContext, config: RetentionRun, lake: LakeResource, retention: RetentionResource
):
    from dagster_project.lib.retention import expire_uploads

    return _receipt(context, expire_uploads(lake.lake, retention.uploads_hours, dry_run=config.dry_run))


# The SFTP resource is the intake's (defs/sftp), bound by its key: domains do not import each other.
@dg.op(
    out=dg.Out(dg.Nothing),
    required_resource_keys={"sftp", "retention"},
    description="Removes old files from the SFTP server's archive/ and quarantine/.",
)
def expire_sftp_files(context: dg.OpExecutionContext, config: RetentionRun):
    from dagster_project.lib.retention import expire_sftp_folder

    sftp, retention = context.resources.sftp, context.resources.retention
    spans = ((sftp.archive_dir, retention.sftp_archive_days), (sftp.quarantine_dir, retention.sftp_quarantine_days))
    kept = "; ".join(f"{folder}/: {'for ever' if days is None else f'{days} days'}" for folder, days in spans)
    removal = Removal("sftp", kept, config.dry_run)
    if any(days is not None for _, days in spans):
        with sftp.client() as client:
            for folder, days in spans:
                expire_sftp_folder(client, folder, days, dry_run=config.dry_run, into=removal)
    return _receipt(context, removal)


@dg.op(out=dg.Out(dg.Nothing), description="Deletes finished runs older than the retention, with their event logs.")
def expire_dagster_runs(context: dg.OpExecutionContext, config: RetentionRun, retention: RetentionResource):
    from dagster_project.defs.retention.run_history import expire_run_history

    removal = expire_run_history(context.instance, retention.run_history_days, dry_run=config.dry_run)
    return _receipt(context, removal)


OPS = (
    expire_quarantine_rows,
    vacuum_delta_tables,
    expire_landing_partitions,
    clear_landing_uploads,
    expire_sftp_files,
    expire_dagster_runs,
)


@dg.config_mapping
def _one_dry_run(run: RetentionRun) -> dg.RunConfig:
    """The launchpad's one field, `dry_run`, given to every step."""
    return dg.RunConfig(ops={op.name: RetentionRun(dry_run=run.dry_run) for op in OPS})


@dg.job(
    name=JOB,
    config=_one_dry_run,
    executor_def=dg.in_process_executor,  # light steps: one process, not one per step
    description="Applies each layer's retention (MEDALLION_RETENTION_*); every step's output is its receipt.",
)
def retention_job() -> None:
    for op in OPS:
        op()


def build_schedule(cron: str) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="retention_daily",
        job=retention_job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Applies the retention of every layer once a day (MEDALLION_RETENTION_CRON).",
    )


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[retention_job], schedules=[build_schedule(settings.retention().cron)])
