"""The bronze assets every source gets, run by a real Dagster instance: what a materialization reports, and the
bronze gate on a partition whose bronze and quarantine come from two loads (one killed between its commits)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import dagster as dg
import pytest

from dagster_project.defs.common.bronze import bronze_key, build_bronze_assets, quarantine_key
from dagster_project.defs.common.resources import LakeResource, PiiKeyResource
from dagster_project.lib.bronze.readers.partner_files import PartnerFilesReader
from dagster_project.lib.intake.landing import landed_files
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.registry import CUSTOMERS
from dagster_project.lib.sources.spec import SourceSpec
from tests.lib.bronze.test_concurrency import DAY, STUCK_SECONDS, Children, land


def _open_landed(context: dg.AssetExecutionContext, spec: SourceSpec) -> AbstractContextManager[PartnerFilesReader]:
    lake = context.resources.lake.lake
    day = context.partition_key
    return nullcontext(PartnerFilesReader(spec, landed_files(lake, spec.name, day), day, lake=lake))


BRONZE, GATE = build_bronze_assets(CUSTOMERS, upstream=dg.AssetKey(["landing", "customers"]), open_reader=_open_landed)


class Platform:
    def __init__(self, lake: Lake, instance: dg.DagsterInstance):
        self.lake, self.instance = lake, instance

    def materialize(self) -> dg.ExecuteInJobResult:
        return dg.materialize(
            [BRONZE, GATE],
            partition_key=DAY,
            resources={"lake": LakeResource(root=self.lake.root), "pii_key": PiiKeyResource()},
            instance=self.instance,
        )

    def gate(self) -> dg.AssetCheckEvaluation:
        """Run the bronze gate of the partition alone, as a check-only run does."""
        defs = dg.Definitions(
            assets=[BRONZE],
            asset_checks=[GATE],
            jobs=[dg.define_asset_job("gate_only", selection=dg.AssetSelection.checks(GATE))],
            resources={"lake": LakeResource(root=self.lake.root), "pii_key": PiiKeyResource()},
        )
        # A run of checks alone names its partition by tag: `partition_key=` looks for a partitioned asset.
        job = defs.resolve_job_def("gate_only")
        result = job.execute_in_process(instance=self.instance, tags={"dagster/partition": DAY}, raise_on_error=False)
        [evaluation] = result.get_asset_check_evaluations()
        return evaluation


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    with dg.instance_for_test() as instance:
        yield Platform(Lake.parse(str(tmp_path / "lake")), instance)


def _metadata(result: dg.ExecuteInJobResult, key: dg.AssetKey) -> dict[str, object]:
    [materialization] = [m for m in result.asset_materializations_for_node(BRONZE.node_def.name) if m.asset_key == key]
    return {k: v.value for k, v in materialization.metadata.items()}


def test_a_materialization_reports_the_table_uri_the_load_and_passes_its_gate(platform: Platform, tmp_path: Path):
    land(platform.lake, tmp_path, range(1, 11), bad=2)
    result = platform.materialize()
    bronze, quarantine = _metadata(result, bronze_key("customers")), _metadata(result, quarantine_key("customers"))
    assert bronze["dagster/uri"] == platform.lake.table("bronze", "customers")
    assert quarantine["dagster/uri"] == platform.lake.table("quarantine", "customers")
    assert (bronze["dagster/partition_row_count"], quarantine["dagster/partition_row_count"]) == (10, 2)
    assert (bronze["load"], bronze["attempts"], quarantine["load"]) == (1, 1, 1)
    assert "repaired" not in bronze
    [gate] = result.get_asset_check_evaluations()
    assert gate.passed, gate.description
    assert gate.metadata["load"].value == 1
    # The validation behind the result: the partition of the Delta table it read, and every expectation passed.
    validation = gate.metadata["validation"].value
    assert validation["batch"] == {
        "relation": "bronze.customers",
        "table_uri": platform.lake.table("bronze", "customers"),
        "predicate": "business_date = ?::DATE",
    }
    evaluated = validation["statistics"]["evaluated_expectations"]
    assert evaluated > 10 and validation["statistics"]["successful_expectations"] == evaluated
    assert gate.metadata["expectations_failed"].value == 0 and gate.metadata["failed"].value == []


def test_the_gate_fails_on_a_pair_from_two_loads_and_a_new_materialization_repairs_it(
    platform: Platform, tmp_path: Path
) -> None:
    land(platform.lake, tmp_path, range(1, 11), bad=1, sequence=1)
    assert platform.materialize().success
    land(platform.lake, tmp_path, range(11, 21), bad=1, sequence=2)

    children = Children(platform.lake)
    try:
        killed = children.start("killed-run", pause="committed:quarantine")
        children.expect("paused", "killed-run")
        os.kill(killed.pid, signal.SIGKILL)
        killed.join(STUCK_SECONDS)
    finally:
        children.close()

    gate = platform.gate()
    assert not gate.passed
    assert gate.description == (
        "customers 2025-11-05: quarantine holds load 2 but bronze load 1 (a load stopped between its quarantine "
        "and bronze commits, or is between them now); the load of run killed-run did not finish: materialize "
        "the partition again, which rewrites both tables"
    )

    repaired = platform.materialize()
    bronze = _metadata(repaired, bronze_key("customers"))
    assert str(bronze["repaired"]).startswith("customers 2025-11-05: quarantine holds load 2 but bronze load 1")
    assert (bronze["load"], bronze["dagster/partition_row_count"]) == (3, 20)
    [gate] = repaired.get_asset_check_evaluations()
    assert gate.passed, gate.description


def test_the_gate_lets_a_load_of_another_run_finish_between_its_two_commits(platform: Platform, tmp_path: Path) -> None:
    land(platform.lake, tmp_path, range(1, 11), bad=1, sequence=1)
    assert platform.materialize().success
    land(platform.lake, tmp_path, range(11, 21), bad=1, sequence=2)
    other = dg.DagsterRun(job_name="customers_intake", run_id="other-run", status=dg.DagsterRunStatus.STARTED)
    platform.instance.add_run(other)

    children = Children(platform.lake)
    try:
        children.start("other-run", pause="committed:quarantine")
        children.expect("paused", "other-run")
        gate = platform.gate()  # bronze is still load 1, whole; the other run's gate checks load 2
        assert gate.passed, gate.description
        assert gate.metadata["load"].value == 1
        children.resume("other-run")
        assert children.finish("other-run")["load"] == 2
    finally:
        children.close()
    assert platform.gate().metadata["load"].value == 2
