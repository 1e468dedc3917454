"""The embedded instance's run launcher: each run starts in a fork of a process that already loaded the code.

Dagster's default launcher asks the code server to start every run in a new interpreter, which imports Dagster
and loads the code location again before the run does anything: about 5 s of CPU per run here (the dbt
manifest, every asset spec), more than most intake runs compute, and minutes each when several runs start at
once on two busy cores. `WarmRunLauncher` keeps one process per loaded code location (its "zygote") that
imported and loaded it once; a run is a fork of it (copy-on-write, milliseconds) that executes the run as
`dagster api execute_run` does, so the run's events, logs and status are Dagster's own.

- Same code as the UI: a zygote belongs to one load of the code location (its code server's id). Reloading
  the location in the UI, or restarting `medallion dev`, starts a new zygote for the next run.
- Run monitoring: each run's process records its pid on the run (`medallion/run_worker_pid`) before the run
  starts; `check_run_worker_health` finds a killed worker at the next monitoring poll and the run fails.
- Termination: the run is marked canceling and its process gets SIGTERM, which Dagster's run worker turns into
  an interrupt (as on Kubernetes).
- Preloaded libraries: `preload_modules` (launcher config) are imported by the zygote after the code location,
  so a run does not import them again: libraries every run needs but the code location keeps out of its own
  load (Great Expectations: seconds of imports). Only libraries that are safe to fork after import belong
  there: none that starts a thread pool it cannot rebuild in the child (polars' does not, and is left out).
- Local only: runs execute on the launcher's host, as under `dagster dev`. Production (Helm) launches each run
  as a Kubernetes Job; compose keeps Dagster's default launcher.

    python -m dagster_project.defs.common.run_launcher   # a zygote: the origin and modules to preload on stdin
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import IO, Any

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._core.origin import RepositoryPythonOrigin
from dagster._serdes import ConfigurableClass, ConfigurableClassData, deserialize_value, serialize_value

PID_TAG = "medallion/run_worker_pid"
READY = "ready"


class WarmRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run in a fork of a process that has the run's code location loaded."""

    def __init__(self, inst_data: ConfigurableClassData | None = None, preload_modules: Sequence[str] = ()) -> None:
        self._inst_data = inst_data
        self._preload_modules = list(preload_modules)
        self._zygotes: dict[str, _Zygote] = {}
        self._lock = threading.Lock()
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {
            "preload_modules": dg.Field(
                [str],
                is_required=False,
                default_value=[],
                description="Modules the zygote imports after loading the code location, for every run to inherit.",
            )
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> WarmRunLauncher:
        return cls(inst_data=inst_data, preload_modules=config_value.get("preload_modules", []))

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = run.job_code_origin
        if origin is None:
            raise dg.DagsterInvariantViolationError(f"run {run.run_id} has no code origin to load")
        repository = origin.repository_origin
        location = serialize_value(repository)
        load = f"{location}\n{_code_server_id(context)}"
        with self._lock:
            zygote = self._zygotes.get(location)
            if zygote is None or zygote.load != load or not zygote.alive():
                if zygote is not None:
                    zygote.stop()
                zygote = self._zygotes[location] = _Zygote.start(repository, load, self._preload_modules)
            zygote.fork(run.run_id, serialize_value(self._instance.get_ref()))

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        pid = _worker_pid(run)
        if pid is None:  # not started by this launcher (the instance's launcher changed meanwhile)
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "the run records no worker process")
        if _alive(pid):
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker process {pid} is gone", run_worker_id=str(pid))

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        pid = _worker_pid(run) if run is not None and not run.is_finished else None
        if run is None or pid is None or not _alive(pid):
            return False
        self._instance.report_run_canceling(run)
        os.kill(pid, signal.SIGTERM)
        return True

    def dispose(self) -> None:
        with self._lock:
            for zygote in self._zygotes.values():
                zygote.stop()
            self._zygotes.clear()


def _code_server_id(context: LaunchRunContext) -> str:
    """Which load of the code location the run was planned against: a new one after a reload."""
    if context.workspace is None:
        return ""
    origin = context.dagster_run.remote_job_origin
    if origin is None:
        return ""
    name = origin.repository_origin.code_location_origin.location_name
    try:
        location = context.workspace.get_code_location(name)
    except Exception:  # a location in error: the zygote reports the load error itself
        return ""
    return str(getattr(location, "server_id", ""))


def _worker_pid(run: dg.DagsterRun) -> int | None:
    value = run.tags.get(PID_TAG)
    return int(value) if value and value.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class _Zygote:
    """The launcher's side of one zygote process: a line per run in, the run's pid (or an error) back."""

    def __init__(self, process: subprocess.Popen, load: str) -> None:
        self.process = process
        self.load = load

    @classmethod
    def start(cls, origin: RepositoryPythonOrigin, load: str, preload: Sequence[str]) -> _Zygote:
        pointer = origin.code_pointer
        process = subprocess.Popen(
            [origin.executable_path, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=getattr(pointer, "working_directory", None) or None,
            text=True,
        )
        zygote = cls(process, load)
        zygote._send(json.dumps({"origin": serialize_value(origin), "preload": list(preload)}))
        answer = zygote._receive()
        if answer != READY:
            zygote.stop()
            raise dg.DagsterLaunchFailedError(f"could not load the code location to start runs from: {answer}")
        return zygote

    def fork(self, run_id: str, instance_ref: str) -> int:
        self._send(json.dumps({"run_id": run_id, "instance_ref": instance_ref}))
        answer = self._receive()
        if not answer.isdigit():
            raise dg.DagsterLaunchFailedError(f"could not start the process of run {run_id}: {answer}")
        return int(answer)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        # Its runs are forks with lives of their own: closing the pipe ends only the zygote.
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except BrokenPipeError as error:
            raise dg.DagsterLaunchFailedError(f"the zygote process exited ({self.process.poll()})") from error

    def _receive(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise dg.DagsterLaunchFailedError(f"the zygote process exited ({self.process.wait()})")
        return line.rstrip("\n")


# --------------------------------------------------------------------------------------------------
# The zygote process
# --------------------------------------------------------------------------------------------------


def _serve(requests: IO[str], answers: IO[str]) -> None:
    """Load the code location named on the first line (and import the modules to preload), then fork a run worker
    per request line."""
    import importlib

    from dagster._utils.error import serializable_error_info_from_exc_info
    from dagster._utils.hosted_user_process import recon_repository_from_origin

    start = json.loads(requests.readline())
    origin = deserialize_value(start["origin"], RepositoryPythonOrigin)
    try:
        recon_repository_from_origin(origin).get_definition()  # the imports and caches every run inherits
        for module in start["preload"]:
            importlib.import_module(module)
    except Exception:
        error = serializable_error_info_from_exc_info(sys.exc_info())
        answers.write(error.to_string().replace("\n", " | ") + "\n")
        answers.flush()
        return
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished runs
    answers.write(READY + "\n")
    answers.flush()
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            requests.close()
            answers.close()
            os._exit(_run_worker(request["run_id"], request["instance_ref"]))
        answers.write(f"{pid}\n")
        answers.flush()


def _run_worker(run_id: str, instance_ref: str) -> int:
    """Execute one run in this (forked) process, as `dagster api execute_run` does."""
    from dagster._cli.api import _execute_run_command_body
    from dagster._core.instance.ref import InstanceRef
    from dagster._utils.interrupts import capture_interrupts

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the run waits for its own children (dbt)
    try:
        with capture_interrupts(), dg.DagsterInstance.from_ref(deserialize_value(instance_ref, InstanceRef)) as inst:
            inst.add_run_tags(run_id, {PID_TAG: str(os.getpid())})  # before the run starts: monitoring sees it
            return _execute_run_command_body(run_id, inst, lambda _: None, set_exit_code_on_failure=False)
    except BaseException:
        import traceback

        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def main() -> None:
    # The protocol gets its own descriptors; what the code and the runs print goes to stderr (the daemon's log).
    requests = os.fdopen(os.dup(0), "r")
    answers = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    _serve(requests, answers)


if __name__ == "__main__":
    main()
