"""The embedded instance's launcher: runs are forks of a process that loaded the code location once, their
workers are watched, terminated and reported like Dagster's own. A real instance (SQLite, the launcher from
infra/dagster/dagster.yaml), real processes and signals; `dagster dev` with its daemon is exercised by
tests/e2e/test_run_monitoring.py (a SIGKILLed run fails and frees its slot) and tests/e2e/test_drop_to_gold.py."""

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.launcher import WorkerStatus

from dagster_project.defs.common.run_launcher import PID_TAG, WarmRunLauncher

REPO_ROOT = Path(__file__).resolve().parents[3]
TIMEOUT_SECONDS = 120.0  # only waited out when something is broken


def _wait_for(what: str, condition: Callable[[], object]) -> object:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def instance(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dg.DagsterInstance]:
    """The instance of infra/dagster/dagster.yaml; a test marked `no_preload` drops the launcher's preloads
    (Great Expectations' 2.5 s of CPU in every zygote), which only the test about them needs."""
    config = yaml.safe_load((REPO_ROOT / "infra/dagster/dagster.yaml").read_text())
    if request.node.get_closest_marker("no_preload"):
        config["run_launcher"]["config"]["preload_modules"] = []
    home = tmp_path / "dagster"
    home.mkdir()
    config["storage"] = {"sqlite": {"base_dir": str(home)}}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with dg.DagsterInstance.from_config(str(home)) as inst:
        assert isinstance(inst.run_launcher, WarmRunLauncher)
        yield inst


def _launch(instance: dg.DagsterInstance, hold: Path | None = None) -> str:
    repository = ReconstructableRepository.for_module(
        "tests.defs.common.warm_location", "defs", working_directory=str(REPO_ROOT)
    )
    job = repository.get_reconstructable_job("__ASSET_JOB")
    run_config = {"ops": {"probe": {"config": {"until_file_exists": str(hold) if hold else ""}}}}
    run = instance.create_run_for_job(
        job_def=job.get_definition(), job_code_origin=job.get_python_origin(), run_config=run_config
    )
    instance.launch_run(run.run_id, workspace=None)  # ty: ignore[invalid-argument-type]
    return run.run_id


def _finished(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun | None:
    run = instance.get_run_by_id(run_id)
    return run if run is not None and run.is_finished else None


def _materialized(instance: dg.DagsterInstance, run_id: str) -> dict[str, int]:
    [event] = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    metadata = event.event_log_entry.asset_materialization.metadata
    return {name: metadata[name].value for name in ("pid", "imported_in", "packages")}


def test_runs_are_forks_of_one_process_that_loaded_the_code(instance: dg.DagsterInstance) -> None:
    first, second = _launch(instance), _launch(instance)
    for run_id in (first, second):
        run = _wait_for(f"run {run_id} to finish", lambda r=run_id: _finished(instance, r))
        assert run.status == dg.DagsterRunStatus.SUCCESS
    a, b = _materialized(instance, first), _materialized(instance, second)
    # Each run had its own process, which did not import the code: it inherited it from the one that did.
    assert a["pid"] != b["pid"]
    assert a["imported_in"] == b["imported_in"] not in (a["pid"], b["pid"], os.getpid())
    assert instance.get_run_by_id(first).tags[PID_TAG] == str(a["pid"])
    # The modules the launcher's config preloads are there too, though neither the location nor Dagster
    # imports them.
    preloaded = instance.run_launcher.inst_data.config_dict["preload_modules"]
    assert preloaded and set(preloaded) <= set(a["packages"])


@pytest.mark.no_preload
def test_a_killed_worker_is_found_dead_and_a_terminated_one_is_canceled(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    launcher = instance.run_launcher
    killed = _launch(instance, hold=tmp_path / "never")
    run = _wait_for("the run to start", lambda: _started(instance, killed))
    assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    os.kill(int(run.tags[PID_TAG]), signal.SIGKILL)
    dead = WorkerStatus.FAILED
    _wait_for("the worker to be found dead", lambda: launcher.check_run_worker_health(run).status == dead)

    terminated = _launch(instance, hold=tmp_path / "never")
    _wait_for("the run to start", lambda: _started(instance, terminated))
    assert launcher.terminate(terminated)
    run = _wait_for("the run to end", lambda: _finished(instance, terminated))
    assert run.status == dg.DagsterRunStatus.CANCELED
    assert not launcher.terminate(terminated)  # nothing left to stop


@pytest.mark.no_preload
def test_a_run_still_launches_after_its_zygote_died(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    hold = tmp_path / "go"
    running = _launch(instance, hold=hold)
    _wait_for("the run to start", lambda: _started(instance, running))
    [zygote] = instance.run_launcher._zygotes.values()
    zygote.process.kill()
    zygote.process.wait()
    hold.touch()  # the forked run outlives its zygote
    assert _wait_for("the run to end", lambda: _finished(instance, running)).status == dg.DagsterRunStatus.SUCCESS
    after = _launch(instance)
    assert _wait_for("the next run to end", lambda: _finished(instance, after)).status == dg.DagsterRunStatus.SUCCESS


def _started(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun | None:
    run = instance.get_run_by_id(run_id)
    return run if run is not None and run.status == dg.DagsterRunStatus.STARTED and PID_TAG in run.tags else None
