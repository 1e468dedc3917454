"""Partner file feeds: SFTP inbox -> landing -> bronze Delta (+ quarantine), one set of assets per feed."""

import dagster as dg

from dagster_project.defs.common.bronze import bronze_key, bronze_results, bronze_specs, quarantine_key
from dagster_project.defs.common.partitions import daily_partitions
from dagster_project.defs.common.resources import LakeResource
from dagster_project.defs.sftp.resources import SftpResource
from dagster_project.lib.bronze.engine import load_partition
from dagster_project.lib.intake.landing import landed_files
from dagster_project.lib.intake.sftp_inbox import IntakeOutcome, take_file
from dagster_project.lib.sources.naming import NamingError, parse_file_name
from dagster_project.lib.sources.registry import FEEDS, FeedSpec


def landing_key(spec: FeedSpec) -> dg.AssetKey:
    return dg.AssetKey(["landing", spec.name])


class LandingConfig(dg.Config):
    files: list[str] = []  # inbox file names to take; empty takes every file of the partition's date


def _files_for_date(names: list[str], spec: FeedSpec, business_date: str) -> list[str]:
    chosen = []
    for name in names:
        try:
            parsed = parse_file_name(name)
        except NamingError:
            continue
        if parsed.feed.name == spec.name and parsed.business_date == business_date:
            chosen.append(name)
    return chosen


def build_landing_asset(spec: FeedSpec) -> dg.AssetsDefinition:
    key = landing_key(spec)

    @dg.asset(
        key=key,
        group_name="landing",
        partitions_def=daily_partitions,
        description=f"{spec.system} {spec.entity} files from the SFTP inbox, kept byte for byte with a manifest.",
        kinds={"sftp", "csv"},
        owners=list(spec.owners),
        check_specs=[dg.AssetCheckSpec("files_accepted", asset=key, description="Every taken file was landed.")],
    )
    def _landing(context: dg.AssetExecutionContext, config: LandingConfig, sftp: SftpResource, lake: LakeResource):
        business_date = context.partition_key
        layout = sftp.layout()
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
                    landing_root=lake.landing_root(),
                    staging_dir=lake.staging_dir(context.run.run_id),
                    source_uri=sftp.uri(f"{layout.inbox}/{name}"),
                )
                log = context.log.info if outcome.accepted else context.log.error
                log(f"{name}: {outcome.status}" + (f" ({outcome.reason})" if outcome.reason else ""))
                outcomes.append(outcome)
        landed = landed_files(lake.landing_root(), spec.name, business_date)
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


def build_bronze_assets(spec: FeedSpec) -> dg.AssetsDefinition:
    @dg.multi_asset(
        name=f"bronze_{spec.name}",
        specs=bronze_specs(
            spec.name,
            upstream=landing_key(spec),
            description=f"{spec.description} Typed, with lineage columns; one row per record.",
            quarantine_description=f"Rows of {spec.name} files that broke the feed contract, with every reason.",
            owners=spec.owners,
            primary_key=spec.key,
            schema_version=spec.schema_version,
        ),
        partitions_def=daily_partitions,
    )
    def _bronze(context: dg.AssetExecutionContext, lake: LakeResource):
        load = load_partition(
            spec,
            landed_files(lake.landing_root(), spec.name, context.partition_key),
            business_date=context.partition_key,
            bronze_path=lake.bronze_path(spec.name),
            quarantine_path=lake.quarantine_path(spec.name),
            run_id=context.run.run_id,
        )
        per_file = [
            {"file": f.file_name, "received": f.received, "loaded": f.loaded, "quarantined": f.quarantined}
            for f in load.files
        ]
        yield from bronze_results(
            context,
            spec.name,
            load,
            lake,
            schema_version=spec.schema_version,
            metadata={
                "files": dg.MetadataValue.json(per_file),
                "checksums_sha256": dg.MetadataValue.json([f.sha256 for f in load.files]),
            },
        )

    return _bronze


def intake_job_name(spec: FeedSpec) -> str:
    return f"{spec.name}_intake"


def build_intake_job(spec: FeedSpec) -> dg.JobDefinition:
    return dg.define_asset_job(
        intake_job_name(spec),
        selection=dg.AssetSelection.assets(landing_key(spec), bronze_key(spec.name), quarantine_key(spec.name)),
        partitions_def=daily_partitions,
        description=f"Take {spec.name} files from the SFTP inbox and rebuild their bronze partition.",
    )


intake_jobs = [build_intake_job(spec) for spec in FEEDS.values()]

defs = dg.Definitions(
    assets=[a for spec in FEEDS.values() for a in (build_landing_asset(spec), build_bronze_assets(spec))],
    jobs=intake_jobs,
)
