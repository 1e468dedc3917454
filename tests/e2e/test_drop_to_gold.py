"""Unattended from drop to gold: into a running `medallion dev`, a day's partner files are uploaded over SFTP
and the PSP's webhooks posted; nothing else is touched, and gold comes to hold them with no failed run."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import pytest

from benchmarks import drop_to_gold

pytestmark = [pytest.mark.slow, pytest.mark.sftp]

WAIT = 1200.0  # seconds; generous for a loaded 2-core machine, and only ever waited out when something is broken


def test_a_days_files_and_webhooks_reach_gold_with_no_failed_run(tmp_path: Path) -> None:
    day = dt.date.today() - dt.timedelta(days=1)
    with drop_to_gold.running_platform(tmp_path) as platform:
        drop = drop_to_gold.make_drops(tmp_path, [day], platform.psp_secret)(0)
        drop_to_gold.deliver(platform, drop)

        drop_to_gold.wait_for(lambda: drop_to_gold.gold_reflects(platform, drop), platform, WAIT, f"gold to hold {day}")
        with drop_to_gold.instance(platform) as instance:
            drop_to_gold.wait_for(
                lambda: drop_to_gold.all_runs_finished(instance), platform, WAIT, "every run to finish"
            )
            runs = instance.get_run_records()
            statuses = {r.dagster_run.job_name: r.dagster_run.status for r in runs}
            assert {r.dagster_run.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}, statuses
            jobs = {r.dagster_run.job_name for r in runs}
            # The intake of each feed and the automation's runs: the sensors and the daemon did it all.
            assert {"customers_intake", "consents_intake", "psp_payouts_intake", "payment_events_ingest"} <= jobs
            assert "__ASSET_JOB" in jobs
