"""Partner file feeds: SFTP inbox -> landing -> bronze Delta (+ quarantine), one set of assets per feed."""

import shutil
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import dagster as dg

from dagster_project import settings
from dagster_project.defs.common import catalog
from dagster_project.defs.common.bronze import bronze_key, build_bronze_assets, quarantine_key
from dagster_project.defs.common.partitions import daily_partitions
from dagster_project.defs.common.resources import LakeResource
from dagster_project.defs.sftp.resources import SftpResource
from dagster_project.lib.intake.landing import landed_files
from dagster_project.lib.intake.sftp_inbox import IntakeOutcome, quarantine_remote, take_file
from dagster_project.lib.sources.naming import NamingError, parse_file_name
from dagster_project.lib.sources.registry import partner_file_sources, source_for_file
from dagster_project.lib.sources.spec import SourceSpec

if TYPE_CHECKING:
    from dagster_project.lib.bronze.engine import Reader


def landing_key(spec: SourceSpec) -> dg.AssetKey:
    return dg.AssetKey(["landing", spec.name])


# The inbox itself: what intake leaves there (reported) and what it moves to quarantine without a partition to
# put it in (a broken name, a date outside the partitions), as observations.
INBOX_KEY = dg.AssetKey(["landing", "sftp_inbox"])
inbox = dg.AssetSpec(
    INBOX_KEY,
    group_name="landing",
    kinds={"sftp"},
    description="The partner's SFTP inbox: entries left there and files quarantined from it, with the reason.",
    owners=list(dict.fromkeys(owner for spec in partner_file_sources() for owner in spec.owners)),
)


def _retry_policy() -> dg.RetryPolicy:
    """A failed step is tried again in its run, after the configured backoff (doubling, with jitter)."""
    backoff = settings.sftp().intake_backoff_seconds
    return dg.RetryPolicy(max_retries=2, delay=backoff, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


class ListedFile(dg.Config):
    name: str
    size: int
    mtime: int


class LandingConfig(dg.Config):
    files: list[str] = []  # inbox file names to take; empty takes every file of the partition's date
    # The files as the sensor listed them: one that is no longer that size and mtime is left alone.
    listed: list[ListedFile] = []


def _files_for_date(names: list[str], spec: SourceSpec, business_date: str) -> list[str]:
    chosen = []
    for name in names:
        try:
            parsed = parse_file_name(name)
        except NamingError:
            continue
        if parsed.source.name == spec.name and parsed.business_date == business_date:
            chosen.append(name)
    return chosen


def build_landing_asset(spec: SourceSpec) -> dg.AssetsDefinition:
    key = landing_key(spec)

    @dg.asset(
        key=key,
        group_name="landing",
        partitions_def=daily_partitions,
        deps=[INBOX_KEY],
        description=f"{spec.files.system} {spec.files.entity} files from the SFTP inbox, kept byte for byte.",
        kinds={"sftp", "csv"},
        owners=list(spec.owners),
        retry_policy=_retry_policy(),
        check_specs=[
            dg.AssetCheckSpec("files_accepted", asset=key, description="Every taken file was landed."),
            dg.AssetCheckSpec(
                "sequence_gaps", asset=key, description="No sequence number is missing below the highest landed."
            ),
        ],
    )
    def _landing(context: dg.AssetExecutionContext, config: LandingConfig, sftp: SftpResource, lake: LakeResource):
        from dagster_project.lib.intake import sequences

        business_date = context.partition_key
        layout = sftp.layout()
        the_lake = lake.lake
        staging = lake.staging_dir(context.run.run_id)
        listed = {f.name: (f.size, f.mtime) for f in config.listed}
        outcomes: list[IntakeOutcome] = []
        failed: dict[str, str] = {}
        with sftp.client() as client:
            names = config.files or _files_for_date(
                [f.name for f in client.list_dir(layout.inbox)], spec, business_date
            )
            for name in names:
                try:
                    outcome = take_file(
                        client,
                        layout,
                        name,
                        lake=the_lake,
                        staging_dir=staging,
                        source_uri=sftp.uri(f"{layout.inbox}/{name}"),
                        listed=listed.get(name),
                    )
                except Exception as exc:  # one file's failure does not stop the others; the run fails after
                    context.log.exception(f"{name}: not taken ({type(exc).__name__}: {exc})")
                    failed[name] = f"{type(exc).__name__}: {exc}"
                    continue
                log = {"changed": context.log.warning}.get(outcome.status, context.log.info)
                if not outcome.accepted and outcome.status != "changed":
                    log = context.log.error
                log(f"{name}: {outcome.status}" + (f" ({outcome.reason})" if outcome.reason else ""))
                outcomes.append(outcome)
        shutil.rmtree(staging, ignore_errors=True)  # the run's downloads, each landed or quarantined by now
        if failed:
            # Raised before anything is reported, so that the step's retry takes the files again; the ones
            # taken already are no longer in the inbox by then.
            raise dg.Failure(
                description=f"{len(failed)} of {len(names)} file(s) could not be taken: "
                + "; ".join(f"{n}: {e}" for n, e in failed.items()),
                metadata={"failed_files": dg.MetadataValue.json(failed)},
            )
        landed = landed_files(the_lake, spec.name, business_date)
        rejected = {o.file_name: o.reason for o in outcomes if o.status == "quarantined"}
        left = {o.file_name: o.reason for o in outcomes if o.status == "changed"}
        numbers = sequences.claimed(the_lake, spec.name)
        gaps = sequences.gaps(numbers)
        yield dg.MaterializeResult(
            metadata={
                "files_taken": len(outcomes),
                "files_landed_now": sum(o.status == "landed" for o in outcomes),
                "duplicates_skipped": sum(o.status in ("already_landed", "duplicate_content") for o in outcomes),
                "files_left_in_inbox": dg.MetadataValue.json(left),
                "files_in_partition": len(landed),
                "files": dg.MetadataValue.json(
                    [{"file": m.file_name, "size": m.size, "sha256": m.sha256, "crc32": m.crc32} for m in landed]
                ),
                "schema_version": spec.schema_version,
            }
        )
        yield dg.AssetCheckResult(
            check_name="files_accepted",
            passed=not rejected,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"rejected_files": dg.MetadataValue.json(rejected)},
            description="; ".join(r or "" for r in rejected.values()) or None,
        )
        yield dg.AssetCheckResult(
            check_name="sequence_gaps",
            passed=not gaps,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "highest_sequence": max(numbers, default=0),
                "missing": len(gaps),
                "missing_sequences": dg.MetadataValue.json(gaps[:100]),
            },
            description=(
                f"{len(gaps)} sequence number(s) of {spec.name} not delivered below {max(numbers):05d}: "
                + ", ".join(f"{n:05d}" for n in gaps[:20])
                + (" ..." if len(gaps) > 20 else "")
            )
            if gaps
            else None,
        )

    return _landing


class QuarantinedFile(dg.Config):
    name: str
    size: int
    mtime: int
    reason: str


class QuarantineConfig(dg.Config):
    files: list[QuarantinedFile] = []


QUARANTINE_JOB = "sftp_quarantine"


def build_quarantine_job() -> dg.JobDefinition:
    """The job that moves inbox files that cannot be taken to quarantine, one run per file."""

    @dg.op(
        name="quarantine_inbox_files",
        retry_policy=_retry_policy(),
        description="Moves inbox files that cannot be taken to quarantine/, each with a .reason.txt beside it.",
    )
    def quarantine_inbox_files(context: dg.OpExecutionContext, config: QuarantineConfig, sftp: SftpResource) -> None:
        layout = sftp.layout()
        failed: dict[str, str] = {}
        with sftp.client() as client:
            for f in config.files:
                try:
                    outcome = quarantine_remote(client, layout, f.name, f.reason, listed=(f.size, f.mtime))
                except Exception as exc:  # one file's failure does not stop the others; the run fails after
                    context.log.exception(f"{f.name}: not quarantined ({type(exc).__name__}: {exc})")
                    failed[f.name] = f"{type(exc).__name__}: {exc}"
                    continue
                spec = source_for_file(f.name)
                context.log_event(
                    dg.AssetObservation(
                        asset_key=INBOX_KEY,
                        metadata={
                            "file": f.name,
                            "outcome": outcome.status,
                            "reason": outcome.reason or "",
                            "feed": spec.name if spec is not None else "",
                        },
                    )
                )
                if outcome.status == "quarantined":
                    context.log.error(f"{f.name}: quarantined ({f.reason})")
                else:
                    context.log.warning(f"{f.name}: {outcome.status} ({outcome.reason}); left for the next look")
        if failed:
            raise dg.Failure(
                description=f"{len(failed)} file(s) could not be quarantined: "
                + "; ".join(f"{n}: {e}" for n, e in failed.items()),
                metadata={"failed_files": dg.MetadataValue.json(failed)},
            )

    @dg.job(name=QUARANTINE_JOB, description="Move inbox files that cannot be taken to quarantine, with the reason.")
    def quarantine_job() -> None:
        quarantine_inbox_files()

    return quarantine_job


def _open_landed_files(context: dg.AssetExecutionContext, spec: SourceSpec) -> "AbstractContextManager[Reader]":
    from dagster_project.lib.bronze.readers.partner_files import PartnerFilesReader

    lake = context.resources.lake.lake
    landed = landed_files(lake, spec.name, context.partition_key)
    return nullcontext(PartnerFilesReader(spec, landed, context.partition_key, lake=lake))


def intake_job_name(spec: SourceSpec) -> str:
    return f"{spec.name}_intake"


def build_intake_job(spec: SourceSpec) -> dg.JobDefinition:
    return dg.define_asset_job(
        intake_job_name(spec),
        selection=dg.AssetSelection.assets(landing_key(spec), bronze_key(spec.name), quarantine_key(spec.name)),
        partitions_def=daily_partitions,
        description=f"Take {spec.name} files from the SFTP inbox and rebuild their bronze partition.",
    )


intake_jobs = [build_intake_job(spec) for spec in partner_file_sources()]


bronze = {
    spec.name: build_bronze_assets(spec, upstream=landing_key(spec), open_reader=_open_landed_files)
    for spec in partner_file_sources()
}


def sftp_definitions(*, sensor_interval_seconds: int = 10) -> dg.Definitions:
    """Every partner feed's landing, bronze and gate, the intake and quarantine jobs, and the inbox sensor."""
    # Built when the code location loads, not at import: the retry policies come from settings.
    from dagster_project.defs.sftp.sensors import build_inbox_sensor

    jobs = [*intake_jobs, build_quarantine_job()]
    watched = catalog.code_reference(build_inbox_sensor, "Sensor watching the inbox")
    return dg.Definitions(
        assets=[
            catalog.with_code_references(inbox, lambda _: [watched]),
            *(
                catalog.with_code_references(
                    build_landing_asset(spec), lambda _, s=spec: [catalog.source_declaration(s.name)]
                )
                for spec in partner_file_sources()
            ),
            *(catalog.with_lake_uri(a) for a, _ in bronze.values()),
        ],
        asset_checks=[gate for _, gate in bronze.values()],
        jobs=jobs,
        sensors=[build_inbox_sensor(jobs, minimum_interval_seconds=sensor_interval_seconds)],
    )


@dg.definitions
def defs() -> dg.Definitions:
    return sftp_definitions()
