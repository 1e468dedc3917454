"""Partner file feeds: SFTP inbox -> landing -> bronze Delta (+ quarantine), one set of assets per feed."""

import shutil
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import dagster as dg

from dagster_project.defs.common.bronze import bronze_key, build_bronze_assets, quarantine_key
from dagster_project.defs.common.partitions import daily_partitions
from dagster_project.defs.common.resources import LakeResource
from dagster_project.defs.sftp.resources import SftpResource
from dagster_project.lib.intake.landing import landed_files
from dagster_project.lib.intake.sftp_inbox import IntakeOutcome, take_file
from dagster_project.lib.sources.naming import NamingError, parse_file_name
from dagster_project.lib.sources.registry import partner_file_sources
from dagster_project.lib.sources.spec import SourceSpec

if TYPE_CHECKING:
    from dagster_project.lib.bronze.engine import Reader


def landing_key(spec: SourceSpec) -> dg.AssetKey:
    return dg.AssetKey(["landing", spec.name])


class LandingConfig(dg.Config):
    files: list[str] = []  # inbox file names to take; empty takes every file of the partition's date


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
        description=f"{spec.files.system} {spec.files.entity} files from the SFTP inbox, kept byte for byte.",
        kinds={"sftp", "csv"},
        owners=list(spec.owners),
        check_specs=[dg.AssetCheckSpec("files_accepted", asset=key, description="Every taken file was landed.")],
    )
    def _landing(context: dg.AssetExecutionContext, config: LandingConfig, sftp: SftpResource, lake: LakeResource):
        business_date = context.partition_key
        layout = sftp.layout()
        the_lake = lake.lake
        staging = lake.staging_dir(context.run.run_id)
        outcomes: list[IntakeOutcome] = []
        with sftp.client() as client:
            names = config.files or _files_for_date(
                [f.name for f in client.list_dir(layout.inbox)], spec, business_date
            )
            for name in names:
                outcome = take_file(
                    client,
                    layout,
                    name,
                    lake=the_lake,
                    staging_dir=staging,
                    source_uri=sftp.uri(f"{layout.inbox}/{name}"),
                )
                log = context.log.info if outcome.accepted else context.log.error
                log(f"{name}: {outcome.status}" + (f" ({outcome.reason})" if outcome.reason else ""))
                outcomes.append(outcome)
        shutil.rmtree(staging, ignore_errors=True)  # the run's downloads, each landed or quarantined by now
        landed = landed_files(the_lake, spec.name, business_date)
        rejected = {o.file_name: o.reason for o in outcomes if not o.accepted}
        yield dg.MaterializeResult(
            metadata={
                "files_taken": len(outcomes),
                "files_landed_now": sum(o.status == "landed" for o in outcomes),
                "duplicates_skipped": sum(o.status in ("already_landed", "duplicate_content") for o in outcomes),
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
            description="; ".join(rejected.values()) or None,
        )

    return _landing


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


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[*(build_landing_asset(spec) for spec in partner_file_sources()), *(a for a, _ in bronze.values())],
        asset_checks=[gate for _, gate in bronze.values()],
        jobs=intake_jobs,
    )
