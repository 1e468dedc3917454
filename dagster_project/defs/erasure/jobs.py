"""The erase job: forget data subjects across the platform (`medallion erase` runs the same job).

Steps: record the subjects in the forget list, rewrite what landed and the inbox, reload the bronze partitions
they fed and purge those tables' history (`lib/erase.py`); rebuild silver and gold from bronze (dbt, full
refresh) and purge their history; sync the reverse ETL target, which deletes the rows gold no longer has.
The receipt is the run's output: figures and the request id, never an identifier.

Identifiers typed into the config form are stored with the run, like any run config; the next erase run
deletes such earlier runs of this job from the instance once their subjects are in the forget list.
`medallion erase` records the subjects itself and starts the job with an empty form, so no run holds them.
"""

import datetime as dt
import uuid

import dagster as dg
from pydantic import Field

from dagster_project.defs.common.resources import LakeResource, PiiKeyResource
from dagster_project.defs.reverse_etl.resources import ReverseEtlTarget
from dagster_project.defs.transform.resources import MedallionDbtCliResource
from dagster_project.defs.webhooks.resources import InboxResource

JOB_NAME = "erase_data_subjects"


class EraseConfig(dg.Config):
    customer_ids: list[int] = Field(default_factory=list, description="CRM customer ids to forget.")
    emails: list[str] = Field(
        default_factory=list, description="E-mail addresses to forget (stored with this run: prefer `medallion erase`)."
    )
    request_id: str = Field(default="", description="Your reference for the request (a ticket id); generated if empty.")


@dg.op(description="Record the subjects, rewrite landing and the inbox, reload bronze, purge its history.")
def erase_inputs(
    context: dg.OpExecutionContext,
    config: EraseConfig,
    lake: LakeResource,
    pii_key: PiiKeyResource,
    inbox: InboxResource,
) -> dict:
    from dagster_project.lib import erase
    from dagster_project.lib.erasure import Subject, record_requests, subjects_of_request

    key = pii_key.key_bytes()
    subjects = [Subject("customer_id", str(c)) for c in config.customer_ids] + [
        Subject("email", e) for e in config.emails
    ]
    request_id = config.request_id or f"erase-{context.run_id[:8]}"
    root = lake.lake
    forget = record_requests(root, key, subjects, request_id=request_id, requested_at=dt.datetime.now(dt.UTC))
    receipt = erase.Receipt(request_id, subjects=subjects_of_request(root, request_id), forget_list=len(forget.hashes))
    _delete_earlier_runs_with_identifiers(context)  # their subjects are in the forget list by now
    with inbox.open() as store:
        store.migrate()  # an inbox nothing was delivered to yet is searched as the empty inbox it is
        affected = erase.erase_inputs(root, forget, receipt, inbox=store)
        erase.reload_bronze(root, forget, affected, receipt, run_id=context.run_id, inbox=store)
    receipt.remaining = erase.remaining(root, forget)  # verified in the last step, after silver and gold
    for source, dates in receipt.partitions_reloaded.items():
        for day in dates:
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=dg.AssetKey(["bronze", source]), partition=day, metadata={"erasure": request_id}
                )
            )
    context.log.info(receipt.render())
    return receipt.as_dict()


@dg.op(description="Rebuild silver and gold from bronze (dbt build, full refresh), then purge their history.")
def rebuild_downstream(
    context: dg.OpExecutionContext, receipt: dict, lake: LakeResource, dbt: MedallionDbtCliResource
) -> dict:
    from dagster_project.lib import erase

    dbt.cli(["build", "--full-refresh"], raise_on_error=True).wait()
    root = lake.lake
    purged = dict(receipt["tables_purged"])
    for layer in ("silver", "gold"):
        for table in root.tables(layer):
            purged[f"{layer}.{table}"] = erase.purge_history(root, root.table(layer, table))
    context.log.info(f"silver and gold rebuilt; history purged of {len(purged)} tables")
    return {**receipt, "tables_purged": purged}


@dg.op(description="Sync the CRM table with gold: rows of forgotten customers are deleted.")
def sync_reverse_etl(
    context: dg.OpExecutionContext, receipt: dict, lake: LakeResource, crm: ReverseEtlTarget
) -> dg.Output:
    from dagster_project.defs.reverse_etl.assets import KEY, read_segments

    stats = crm.sync(read_segments(lake.lake), key=KEY)
    receipt = {**receipt, "reverse_etl_deleted": stats.deleted}
    if receipt["remaining"]:
        raise dg.Failure(
            description=f"bronze still holds records naming an erased subject: {receipt['remaining']}",
            metadata={"receipt": dg.MetadataValue.json(receipt)},
        )
    return dg.Output(receipt, metadata={"receipt": dg.MetadataValue.json(receipt)})


def _delete_earlier_runs_with_identifiers(context: dg.OpExecutionContext) -> None:
    """Finished runs of this job whose config named subjects: those subjects are in the forget list now."""
    finished = dg.RunsFilter(job_name=JOB_NAME, statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE])
    for run in context.instance.get_runs(filters=finished):
        ops = (run.run_config or {}).get("ops", {}).get("erase_inputs", {}).get("config", {})
        if ops.get("customer_ids") or ops.get("emails"):
            context.instance.delete_run(run.run_id)


@dg.job(
    name=JOB_NAME,
    description="Forget data subjects (right to erasure) everywhere the platform writes; prints a receipt.",
)
def erase_data_subjects() -> None:
    sync_reverse_etl(rebuild_downstream(erase_inputs()))


def new_request_id() -> str:
    return f"erase-{uuid.uuid4().hex[:12]}"


def run_erase_job(request_id: str) -> dict | None:
    """Run the erase job in this process on the instance of DAGSTER_HOME, applying the forget list (the
    subjects were recorded by the caller: the run's config names none); returns the receipt, None if failed."""
    from dagster_project.definitions import defs as load_defs

    with dg.DagsterInstance.get() as instance:
        result = (
            load_defs()
            .resolve_job_def(JOB_NAME)
            .execute_in_process(
                instance=instance,
                run_config={"ops": {"erase_inputs": {"config": {"request_id": request_id}}}},
                raise_on_error=False,
            )
        )
        return result.output_for_node("sync_reverse_etl") if result.success else None


def main() -> None:
    """Entry point of `medallion erase`'s child process on the embedded platform: `<request id>`."""
    import json
    import sys

    receipt = run_erase_job(sys.argv[1])
    print(json.dumps(receipt))
    sys.exit(0 if receipt is not None else 1)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[erase_data_subjects])
