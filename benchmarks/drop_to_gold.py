"""Drop to gold: the real platform (`medallion dev`: Dagster UI and daemon, embedded SFTP server, webhook
receiver) on free ports and a fresh data directory; partner files uploaded over SFTP and signed PSP webhooks
posted into it, then nothing touched: the sensors, the intake runs and the automation carry them to gold.

Each drop is one business day: the CRM's customer and consent exports of the day and a PSP batch (charges,
refunds and payouts over the day and the two before it, the payout files on SFTP and the events as webhooks).
A drop has reached gold when `gold.dim_customers` holds the rows of the day's customer file and
`gold.fct_payments` every charge of the batch, read from the lake's Delta tables while the platform runs.

Beside the latency: every run the platform made (none may fail), each run's processes (distinct pids in its
event log), its wall time against the time its steps computed, and the code location's load time beside a
bare `import dagster` (benchmarks/load.py), measured in the same run.

    uv run python -m benchmarks drop-to-gold
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PSP = "stripe"
READY_TIMEOUT = 300.0  # a cold start on a loaded 2-core machine: imports, code location, daemon's first ticks
GOLD_TIMEOUT = 900.0  # only waited out when something is broken
POLL_SECONDS = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Platform:
    """A running `medallion dev` and where its parts are."""

    data: Path
    ui_url: str
    webhooks_url: str
    sftp_port: int
    psp_secret: str
    log: Path
    process: subprocess.Popen
    started_at: float = 0.0

    @property
    def lake(self) -> Path:
        return self.data / "lake"

    @property
    def dagster_home(self) -> Path:
        return self.data / "dagster"

    @property
    def keys(self) -> Path:
        return self.data / "sftp" / "keys"


@contextmanager
def running_platform(work: Path, *, env: Mapping[str, str] | None = None) -> Iterator[Platform]:
    """`medallion dev` in a fresh data directory under `work`, its secrets made here (so this process signs
    the webhooks with the receiver's secret), ready once the daemon has ticked the inbox sensor."""
    data = work / "data"
    data.mkdir(parents=True)
    ui, hooks, sftp = free_port(), free_port(), free_port()
    psp_secret = secrets.token_hex(32)
    child = {
        **os.environ,
        "MEDALLION_DATA_DIR": str(data),
        "DAGSTER_HOME": str(data / "dagster"),
        "MEDALLION_PII_HMAC_KEY": secrets.token_hex(32),
        f"MEDALLION_WEBHOOK_SECRETS_{PSP.upper()}": psp_secret,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **(env or {}),
    }
    for name in ("MEDALLION_LAKE_ROOT", "MEDALLION_WEBHOOK_INBOX_URL", "MEDALLION_SFTP_PORT"):
        child.pop(name, None)
    log = work / "medallion-dev.log"
    command = [str(BIN / "medallion"), "dev", "--port", str(ui), "--webhooks-port", str(hooks)]
    command += ["--sftp-port", str(sftp)]
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=child, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    platform = Platform(
        data=data,
        ui_url=f"http://127.0.0.1:{ui}",
        webhooks_url=f"http://127.0.0.1:{hooks}",
        sftp_port=sftp,
        psp_secret=psp_secret,
        log=log,
        process=process,
    )
    try:
        start = time.monotonic()
        wait_for(lambda: _answers(f"{platform.webhooks_url}/readyz"), platform, READY_TIMEOUT, "the webhook receiver")
        wait_for(lambda: _answers(f"{platform.ui_url}/server_info"), platform, READY_TIMEOUT, "the Dagster UI")
        with instance(platform) as inst:
            wait_for(lambda: _sensor_ticked(inst), platform, READY_TIMEOUT, "the daemon's first inbox sensor tick")
        platform.started_at = time.monotonic() - start
        yield platform
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(condition: Callable[[], Any], platform: Platform, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if platform.process.poll() is not None:
            raise RuntimeError(
                f"medallion dev exited ({platform.process.returncode}) waiting for {what}: see {platform.log}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}: see {platform.log}")
        time.sleep(POLL_SECONDS)


@contextmanager
def instance(platform: Platform) -> Iterator[Any]:
    import dagster as dg

    # The platform's instance (its SQLite storage under DAGSTER_HOME), opened from this process too.
    home = str(platform.dagster_home)
    with dg.DagsterInstance.local_temp(home, overrides={"storage": {"sqlite": {"base_dir": home}}}) as inst:
        yield inst


def _sensor_ticked(inst: Any) -> bool:
    states = [s for s in inst.all_instigator_state() if s.instigator_name == "sftp_inbox_sensor"]
    return any(inst.get_ticks(s.instigator_origin_id, s.selector_id, limit=1) for s in states)


@dataclass
class Drop:
    """One business day's deliveries and what gold must show for them."""

    day: dt.date
    files: list[Path]
    deliveries: list[Any]
    customer_file: str
    charge_ids: set[str]


def make_drops(work: Path, days: list[dt.date], secret: str) -> Callable[[int], Drop]:
    """A function building drop `i` (of `days[i]`): the partner files are written for every day at once (the
    population on the first day, changes after), each PSP batch when it is built (its signatures are fresh)."""
    from dagster_project.samples.partner_files import write_consent_files, write_customer_files

    customers = write_customer_files(work / "files", days)
    consents = write_consent_files(work / "files", days)

    def build(i: int) -> Drop:
        from dagster_project.samples.payments import build_payments_sample

        day = days[i]
        psp = build_payments_sample(
            work / f"psp-{i}",
            [day - dt.timedelta(days=2), day - dt.timedelta(days=1), day],
            secret=secret,
            batch=f"d{i}",
            first_sequence=1 + 2 * i,  # two payout files a batch
        )
        return Drop(
            day=day,
            files=[customers[i].path, consents[i].path, *(f.path for f in psp.payout_files)],
            deliveries=psp.deliveries,
            customer_file=customers[i].path.name,
            charge_ids=set(psp.truth.charges),
        )

    return build


def deliver(platform: Platform, drop: Drop) -> None:
    from dagster_project.lib.clients.sftp import SftpClient
    from dagster_project.samples.payments import post_deliveries

    keys = platform.keys
    with SftpClient("127.0.0.1", platform.sftp_port, "acme", keys / "client_ed25519", keys / "known_hosts") as c:
        for path in drop.files:
            c.upload(path, f"inbox/{path.name}")
    post_deliveries(platform.webhooks_url, drop.deliveries)


def _column(table: Path, column: str) -> list[Any]:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(str(table)).to_pyarrow_table(columns=[column]).column(column).to_pylist()
    except TableNotFoundError:
        return []


def gold_reflects(platform: Platform, drop: Drop) -> bool:
    """The day's customer file in gold.dim_customers and every charge of its PSP batch in gold.fct_payments."""
    gold = platform.lake / "gold"
    files = {Path(f).name for f in _column(gold / "dim_customers", "_source_file") if f}
    if drop.customer_file not in files:
        return False
    return drop.charge_ids <= set(_column(gold / "fct_payments", "charge_id"))


def all_runs_finished(inst: Any) -> bool:
    import dagster as dg

    return not inst.get_run_records(
        dg.RunsFilter(
            statuses=[
                dg.DagsterRunStatus.QUEUED,
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED,
                dg.DagsterRunStatus.CANCELING,
            ]
        ),
        limit=1,
    )


@dataclass
class RunFigures:
    run_id: str
    job: str
    status: str
    processes: int
    wall_seconds: float  # from the run's launch to its end
    queued_seconds: float  # from its creation to its launch
    step_seconds: float  # summed step compute times: the work
    partitions: str
    failed_steps: list[str] = field(default_factory=list)
    retried_steps: list[str] = field(default_factory=list)  # run again by the step after a lost commit race


def run_figures(inst: Any) -> list[RunFigures]:
    import dagster as dg

    figures = []
    for record in inst.get_run_records():
        run = record.dagster_run
        pids, step_ms, failed, retried = set(), 0.0, [], []
        for entry in inst.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None:
                continue
            if event.pid is not None:
                pids.add(event.pid)
            if event.event_type == dg.DagsterEventType.STEP_SUCCESS:
                step_ms += event.event_specific_data.duration_ms or 0
            elif event.event_type == dg.DagsterEventType.STEP_FAILURE:
                failed.append(event.step_key or "")
            elif event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY:
                retried.append(event.step_key or "")
        tags = run.tags
        partitions = tags.get("dagster/partition") or (
            f"{tags['dagster/asset_partition_range_start']}..{tags['dagster/asset_partition_range_end']}"
            if "dagster/asset_partition_range_start" in tags
            else ""
        )
        launched = record.start_time or record.create_timestamp.timestamp()
        figures.append(
            RunFigures(
                run_id=run.run_id,
                job=run.job_name,
                status=run.status.value,
                processes=len(pids),
                wall_seconds=(record.end_time or launched) - launched,
                queued_seconds=launched - record.create_timestamp.timestamp(),
                step_seconds=step_ms / 1000,
                partitions=partitions,
                failed_steps=failed,
                retried_steps=retried,
            )
        )
    return figures


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: with few drops p95 is the slowest but one, or the slowest."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def run(work: Path, *, drops: int = 3, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Start the platform, deliver `drops` days one after the other (each once the previous reached gold),
    and return the figures."""
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # A SIGTERM (a `timeout`, a CI job cancelled) stops the platform too, through the `finally`s.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    today = dt.date.today()
    days = [today - dt.timedelta(days=drops - i) for i in range(drops)]
    latencies: list[float] = []
    with running_platform(work, env=env) as platform:
        build = make_drops(work, days, platform.psp_secret)
        for i in range(drops):
            drop = build(i)
            start = time.monotonic()
            deliver(platform, drop)
            wait_for(lambda d=drop: gold_reflects(platform, d), platform, GOLD_TIMEOUT, f"gold to reflect {drop.day}")
            latencies.append(time.monotonic() - start)
        with instance(platform) as inst:
            wait_for(lambda: all_runs_finished(inst), platform, GOLD_TIMEOUT, "every run to finish")
            runs = run_figures(inst)
        ready_seconds = platform.started_at
    return {
        "drops": [{"day": d.isoformat(), "seconds": s} for d, s in zip(days, latencies, strict=True)],
        "p50": statistics.median(latencies),
        "p95": percentile(latencies, 95),
        "max": max(latencies),
        "ready_seconds": ready_seconds,
        "runs": runs,
        "env": dict(env or {}),
    }


def print_report(result: dict[str, Any]) -> None:
    runs: list[RunFigures] = result["runs"]
    failed = [r for r in runs if r.status != "SUCCESS"]
    print(f"platform ready (UI, receiver, daemon's first tick) in {result['ready_seconds']:.0f} s")
    print(f"{'business day':>12} {'drop to gold s':>15}")
    for d in result["drops"]:
        print(f"{d['day']:>12} {d['seconds']:>15.1f}")
    print(f"p50 {result['p50']:.1f} s, p95 {result['p95']:.1f} s, max {result['max']:.1f} s")
    print(f"runs: {len(runs)}, failed: {len(failed)}, steps retried: {sum(len(r.retried_steps) for r in runs)}")
    for r in failed:
        print(f"  FAILED {r.job} {r.partitions} {r.run_id}: steps {', '.join(r.failed_steps) or '-'}")
    for r in runs:
        if r.retried_steps:
            print(f"  retried in {r.job} {r.partitions} {r.run_id}: {', '.join(r.retried_steps)}")
    by_job: dict[str, list[RunFigures]] = {}
    for r in runs:
        by_job.setdefault(r.job, []).append(r)
    print(f"{'job':<28} {'runs':>5} {'processes/run':>13} {'queued s':>9} {'wall s':>8} {'steps s':>8}")
    for job, rs in sorted(by_job.items()):
        print(
            f"{job:<28} {len(rs):>5} {statistics.mean(r.processes for r in rs):>13.1f} "
            f"{statistics.median(r.queued_seconds for r in rs):>9.1f} "
            f"{statistics.median(r.wall_seconds for r in rs):>8.1f} "
            f"{statistics.median(r.step_seconds for r in rs):>8.1f}"
        )
    wall = sum(r.wall_seconds for r in runs)
    work = sum(r.step_seconds for r in runs)
    print(f"all runs: {wall:.0f} s of run wall time for {work:.0f} s of step compute ({work / wall:.0%} work)")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--drops", type=int, default=3)
    parser.add_argument("--work", default=".bench/drop_to_gold")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the platform (repeatable)")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    print_report(run(Path(args.work).resolve(), drops=args.drops, env=extra))
