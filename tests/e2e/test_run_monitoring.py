"""A run killed in the middle of a step that holds a pool slot ends as a failure, its slot is freed, and the next
run that needs the slot proceeds.

Real parts: the embedded instance config (infra/dagster/dagster.yaml) in a temporary DAGSTER_HOME, `dagster dev`
as `medallion dev` starts it (webserver, daemon with run monitoring, code server), runs submitted through the
webserver's GraphQL API as the UI's Materialize button does, and SIGKILLs while the step holds the slot.

The step is a stand-in for a full dbt rebuild, declared below: it claims the same pool (`LAKE_REBUILD_POOL`) and
blocks until it is killed, so the kill always lands mid-step whatever the machine's speed (a real dbt step on
sample data can finish before the kill arrives, and it needs a lake with bronze data first).
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import dagster as dg
import httpx
import pytest

from dagster_project import settings
from dagster_project.defs.common.partitions import LAKE_REBUILD_POOL

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dagster_dev")]  # whole `dagster dev` stacks, one at a time

HOLDING = "holding the pool slot until killed"
# Generous: the daemon, a run worker and the code server share two cores with other test workers.
TIMEOUT_SECONDS = 180.0
# What the issue asks: after a kill, the next run proceeds within two minutes. Printed, not asserted: the
# machine is shared, so a tight bound would measure the neighbours.
TARGET_SECONDS = 120
T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# The code location `dagster dev` serves in these tests (it imports this module).
# --------------------------------------------------------------------------------------------------


class RebuildConfig(dg.Config):
    hold: bool = False


@dg.asset(pool=LAKE_REBUILD_POOL)
def full_rebuild(context: dg.AssetExecutionContext, config: RebuildConfig) -> dg.MaterializeResult:
    """Stands in for a full rebuild of dbt models: holds the pool slot while it runs."""
    if config.hold:
        context.log.info(HOLDING)
        threading.Event().wait()
    return dg.MaterializeResult(metadata={"pid": os.getpid()})


full_rebuild_job = dg.define_asset_job("full_rebuild_job", selection=[full_rebuild])
defs = dg.Definitions(assets=[full_rebuild], jobs=[full_rebuild_job])


# --------------------------------------------------------------------------------------------------
# dagster dev on loopback
# --------------------------------------------------------------------------------------------------

LAUNCH_RUN = """
mutation LaunchRun($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""

LOCATION_STATUS = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


@dataclass
class DagsterDev:
    url: str
    log: Path
    process: subprocess.Popen[bytes]

    def submit(self, *, hold: bool) -> str:
        """Materialize the stand-in through GraphQL (launchRun, as the UI does); the run joins the queue."""
        params = {
            "selector": {
                "repositoryLocationName": __name__,
                "repositoryName": "__repository__",
                "jobName": full_rebuild_job.name,
            },
            "runConfigData": {"ops": {full_rebuild.op.name: {"config": {"hold": hold}}}},
        }
        response = httpx.post(
            f"{self.url}/graphql", json={"query": LAUNCH_RUN, "variables": {"params": params}}, timeout=60
        )
        response.raise_for_status()
        result = response.json()["data"]["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", f"launchRun failed: {result}"
        return result["run"]["runId"]

    def log_tail(self) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return f"last lines of {self.log}:\n" + "\n".join(lines[-60:])

    def kill_everything(self) -> None:
        """SIGKILL the whole `dagster dev` session at once (webserver, daemon, code server, run worker, step)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(what: str, probe: Callable[[], T | None], *, deadline: float, context: Callable[[], str]) -> T:
    """Poll `probe` until it returns something truthy; at the deadline, fail naming `what`, with `context()`."""
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {TIMEOUT_SECONDS:.0f} s waiting for {what}\n{context()}")
        time.sleep(0.25)


def _location_loaded(dev: DagsterDev) -> bool:
    if dev.process.poll() is not None:
        pytest.fail(f"`dagster dev` exited with code {dev.process.returncode}\n{dev.log_tail()}")
    try:
        response = httpx.post(f"{dev.url}/graphql", json={"query": LOCATION_STATUS}, timeout=5)
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    for entry in response.json()["data"]["workspaceOrError"].get("locationEntries", []):
        if entry["name"] == __name__ and entry["loadStatus"] == "LOADED":
            error = entry["locationOrLoadError"]
            assert error["__typename"] != "PythonError", f"the test code location failed to load: {error}"
            return True
    return False


def _default_signals() -> None:
    # pytest may run in the background with SIGINT/SIGTERM ignored; `dagster dev` must still stop on them.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(settings.project_root() / "infra" / "dagster" / "dagster.yaml", home / "dagster.yaml")
    # The config takes its SQLite folder from DAGSTER_HOME, in `dagster dev` and in this test's reader alike.
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def start_dagster_dev(dagster_home: Path, tmp_path: Path) -> Iterator[Callable[[], DagsterDev]]:
    """Starts `dagster dev` on the test's instance and waits until it serves this module's code location."""
    started: list[DagsterDev] = []

    def start() -> DagsterDev:
        port = _free_port()
        log = tmp_path / f"dagster-dev-{len(started) + 1}.log"
        command = [str(Path(sys.executable).parent / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(port)]
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*command, "-m", __name__],
                cwd=settings.project_root(),
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_default_signals,
                # Its own process group: a crash is simulated by killing the group, and teardown kills
                # whatever is left in it (a run worker, a step process).
                start_new_session=True,
            )
        dev = DagsterDev(url=f"http://127.0.0.1:{port}", log=log, process=process)
        started.append(dev)
        _wait_for(
            "`dagster dev` to serve the test code location",
            lambda: _location_loaded(dev),
            deadline=time.monotonic() + TIMEOUT_SECONDS,
            context=dev.log_tail,
        )
        return dev

    yield start
    for dev in started:
        if dev.process.poll() is None:
            dev.process.terminate()
            try:
                dev.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(dev.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------------------------------
# reading the instance
# --------------------------------------------------------------------------------------------------


def _run(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun:
    run = instance.get_run_by_id(run_id)
    assert run is not None, f"run {run_id} is not in the instance"
    return run


def _run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The run worker's pid, from the engine event the code server writes when it starts the process."""
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        match = re.fullmatch(r"Started process for run \(pid: (\d+)\)\.", record.message or "")
        if match:
            return int(match.group(1))
    return None


def _step_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The step's own process (the multiprocess executor runs each step in a child of the run worker)."""
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTED):
        metadata = record.get_dagster_event().event_specific_data.metadata  # type: ignore[union-attr]
        return int(metadata["pid"].value)
    return None


def _slot_holders(instance: dg.DagsterInstance) -> set[str]:
    return {slot.run_id for slot in instance.event_log_storage.get_concurrency_info(LAKE_REBUILD_POOL).claimed_slots}


def _holds_the_slot_mid_step(instance: dg.DagsterInstance, run_id: str) -> bool:
    in_step = any(record.user_message == HOLDING for record in instance.all_logs(run_id))
    return in_step and run_id in _slot_holders(instance)


def _step_started_at(instance: dg.DagsterInstance, run_id: str) -> float | None:
    records = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
    return records[0].timestamp if records else None


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _blocked_by_the_pool(dev: DagsterDev, run_id: str) -> bool:
    # The queue daemon logs this once per run it holds back for want of a pool slot.
    return f"Run {run_id} is blocked by global concurrency limits" in dev.log.read_text(errors="replace")


def _submit_and_hold(dev: DagsterDev, instance: dg.DagsterInstance, deadline: float) -> tuple[str, int, int]:
    """A run whose step holds the slot, its run worker's pid and its step's pid."""
    run_id = dev.submit(hold=True)
    _wait_for(
        f"run {run_id} to hold the `{LAKE_REBUILD_POOL}` slot inside its step",
        lambda: _holds_the_slot_mid_step(instance, run_id),
        deadline=deadline,
        context=dev.log_tail,
    )
    worker_pid, step_pid = _run_worker_pid(instance, run_id), _step_pid(instance, run_id)
    assert worker_pid and step_pid, f"run {run_id}: no run worker or step pid in its events"
    return run_id, worker_pid, step_pid


def _submit_next(dev: DagsterDev, deadline: float) -> str:
    """The next run that needs the slot; the daemon holds it in the queue."""
    run_id = dev.submit(hold=False)
    _wait_for(
        f"the daemon to hold run {run_id} back for the `{LAKE_REBUILD_POOL}` slot",
        lambda: _blocked_by_the_pool(dev, run_id),
        deadline=deadline,
        context=dev.log_tail,
    )
    return run_id


@dataclass
class Timeline:
    failed: float
    freed: float
    next_step_started: float
    next_succeeded: float


def _follow_to_the_next_run(
    dev: DagsterDev, instance: dg.DagsterInstance, killed: str, waiting: str, deadline: float
) -> Timeline:
    """Waits for the killed run to fail, its slot to be freed and the waiting run to succeed; wall-clock times."""
    _wait_for(
        f"run {killed} to be marked failed",
        lambda: _run(instance, killed).status == dg.DagsterRunStatus.FAILURE,
        deadline=deadline,
        context=dev.log_tail,
    )
    failed = time.time()
    _wait_for(
        f"run {killed}'s `{LAKE_REBUILD_POOL}` slot to be freed",
        lambda: killed not in _slot_holders(instance),
        deadline=deadline,
        context=dev.log_tail,
    )
    freed = time.time()
    _wait_for(
        f"run {waiting} to end", lambda: _run(instance, waiting).is_finished, deadline=deadline, context=dev.log_tail
    )
    succeeded = time.time()
    assert _run(instance, waiting).status == dg.DagsterRunStatus.SUCCESS, (
        f"run {waiting} did not succeed\n{dev.log_tail()}"
    )
    step_started = _step_started_at(instance, waiting)
    assert step_started is not None, f"run {waiting} succeeded without starting its step"
    return Timeline(failed, freed, step_started, succeeded)


def _report(label: str, since: float, timeline: Timeline, instance: dg.DagsterInstance) -> None:
    monitoring = instance.run_monitoring_settings
    print(
        f"\n{label} (run monitoring: poll {instance.run_monitoring_poll_interval_seconds} s, slots freed "
        f"{monitoring.get('free_slots_after_run_end_seconds')} s after a run ends): run failed "
        f"+{timeline.failed - since:.1f} s, slot freed +{timeline.freed - since:.1f} s, next run's step started "
        f"+{timeline.next_step_started - since:.1f} s, next run succeeded +{timeline.next_succeeded - since:.1f} s "
        f"(target: the next run proceeds within {TARGET_SECONDS} s)"
    )


# --------------------------------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------------------------------


def test_a_run_worker_killed_mid_step_fails_its_run_frees_the_slot_and_the_next_run_proceeds(
    start_dagster_dev: Callable[[], DagsterDev], dagster_home: Path
) -> None:
    dev = start_dagster_dev()
    deadline = time.monotonic() + TIMEOUT_SECONDS
    with dg.DagsterInstance.get() as instance:
        killed, worker_pid, step_pid = _submit_and_hold(dev, instance, deadline)
        waiting = _submit_next(dev, deadline)
        assert _run(instance, waiting).status == dg.DagsterRunStatus.QUEUED

        # The run worker dies without a word (as an OOM kill does), then its step process, which would
        # otherwise live on as an orphan.
        os.kill(worker_pid, signal.SIGKILL)
        killed_at = time.time()
        os.kill(step_pid, signal.SIGKILL)

        timeline = _follow_to_the_next_run(dev, instance, killed, waiting, deadline)
        assert timeline.next_step_started > killed_at, f"run {waiting} started its step before the slot was free"
        _report("run worker SIGKILLed mid-step; kill ->", killed_at, timeline, instance)


def test_a_run_that_died_with_dagster_dev_is_found_dead_after_the_restart_and_frees_the_slot(
    start_dagster_dev: Callable[[], DagsterDev], dagster_home: Path
) -> None:
    """`dagster dev` killed mid-run: no process is left to report the run, which stays STARTED with its slot
    until the restarted daemon's run monitoring finds its worker process gone and fails it."""
    first = start_dagster_dev()
    deadline = time.monotonic() + TIMEOUT_SECONDS
    with dg.DagsterInstance.get() as instance:
        assert instance.run_launcher.supports_check_run_worker_health, "the embedded launcher cannot see dead runs"
        killed, worker_pid, step_pid = _submit_and_hold(first, instance, deadline)

        first.kill_everything()
        _wait_for(
            f"run {killed}'s processes to be gone",
            lambda: _gone(worker_pid) and _gone(step_pid),
            deadline=deadline,
            context=first.log_tail,
        )
        assert _run(instance, killed).status == dg.DagsterRunStatus.STARTED
        assert killed in _slot_holders(instance)

        restarted_at = time.time()
        second = start_dagster_dev()
        deadline = time.monotonic() + TIMEOUT_SECONDS
        waiting = _submit_next(second, deadline)

        timeline = _follow_to_the_next_run(second, instance, killed, waiting, deadline)
        reasons = [record.message or "" for record in instance.all_logs(killed)]
        assert any(f"process {worker_pid} is gone" in reason for reason in reasons), f"run {killed}: {reasons[-3:]}"
        _report("dagster dev SIGKILLed mid-step and restarted; restart ->", restarted_at, timeline, instance)
