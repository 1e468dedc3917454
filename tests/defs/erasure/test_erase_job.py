"""The erase job on a real Dagster instance: the Launchpad's form, the receipt, and runs whose config named
subjects deleted by the next erase run."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
from deltalake import DeltaTable

from dagster_project import settings
from dagster_project.definitions import defs as load_defs
from dagster_project.defs.erasure.jobs import JOB_NAME
from dagster_project.lib import erase
from dagster_project.lib.bronze.engine import load_partition
from dagster_project.lib.intake.landing import land_file
from dagster_project.lib.sources.naming import parse_file_name
from dagster_project.lib.sources.registry import CUSTOMERS
from dagster_project.samples.partner_files import write_customer_files
from tests.lib.customer_files import RECEIVED_AT

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dbt")]


def _bronze_ids() -> set[int]:
    lake = settings.lake()
    table = DeltaTable(lake.table("bronze", "customers"), storage_options=lake.delta_options())
    return set(table.to_pyarrow_table(columns=["customer_id"]).column("customer_id").to_pylist())


def test_the_erase_job_forgets_a_customer_and_the_next_run_deletes_runs_that_named_one(
    platform_env: Path, tmp_path: Path
):
    lake = settings.lake()
    for g in write_customer_files(tmp_path / "files", [dt.date(2025, 11, 5)], customers=20, changes_per_day=5):
        staged = tmp_path / g.path.name
        shutil.copyfile(g.path, staged)
        land_file(lake, parse_file_name(g.path.name), staged, source="sftp", source_uri="u", received_at=RECEIVED_AT)
        day = g.business_date
        load_partition(
            CUSTOMERS, lambda day=day: erase.open_reader(CUSTOMERS, lake, day), lake=lake, run_id="r", business_date=day
        )
    before = _bronze_ids()
    victim = min(before)
    job = load_defs().resolve_job_def(JOB_NAME)
    with dg.instance_for_test() as instance:
        first = job.execute_in_process(
            instance=instance,
            run_config={"ops": {"erase_inputs": {"config": {"customer_ids": [victim], "request_id": "T-1"}}}},
        )
        receipt = first.output_for_node("sync_reverse_etl")
        assert receipt["request_id"] == "T-1" and receipt["subjects"] == 1 and receipt["remaining"] == {}
        assert receipt["records_erased"]["customers"] >= 1
        assert _bronze_ids() == before - {victim}
        assert instance.get_run_by_id(first.run_id) is not None

        second = job.execute_in_process(instance=instance)  # the forget list applied again: nothing left to do
        assert second.output_for_node("sync_reverse_etl")["records_erased"].get("customers", 0) == 0
        assert instance.get_run_by_id(first.run_id) is None  # its config named the customer
        assert instance.get_run_by_id(second.run_id) is not None
        logged = json.dumps([str(e) for e in instance.all_logs(second.run_id)])
        assert f'"customer_ids": [{victim}]' not in logged
