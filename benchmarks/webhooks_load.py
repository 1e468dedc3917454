"""Load and fault test of the webhook receiver, the way a payment service provider would drive it.

The receiver runs as its own process (``python -m dagster_project.services.webhook_receiver``) on a loopback
port with a SQLite inbox in a work directory. A concurrent client sends every event signed, resends 10% of
them after they were acknowledged (a PSP's duplicate deliveries), and retries every delivery that was not
answered 2xx until it is, re-signing each attempt. Half-way through, the receiver is killed with SIGKILL and
started again. At the end the inbox is checked against what the client saw acknowledged:

* acknowledged but missing from the inbox must be 0 (a 2xx means committed);
* duplicates stored must be 0 (one row per event id), and every stored body must equal the bytes sent.

``run()`` returns the figures and the inbox location, so later stages (bronze) can continue from it.

    uv run python benchmarks/webhooks_load.py --events 20000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from dagster_project.lib.intake.inbox import Inbox, migrate, sha256_hex, webhook_events
from dagster_project.lib.intake.signatures import sign_stripe

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EVENT_TYPES = ("charge.succeeded", "charge.succeeded", "charge.refunded", "charge.dispute.created", "payout.paid")
FIRST_BUSINESS_DAY = datetime(2025, 11, 3, tzinfo=UTC)
BUSINESS_DAYS = 3


def make_stripe_events(count: int, *, seed: int = 7) -> list[tuple[str, bytes]]:
    """`count` Stripe-style events (event id, exact body bytes) spread over a few business days."""
    rng = random.Random(seed)
    events: list[tuple[str, bytes]] = []
    span = BUSINESS_DAYS * 86_400
    for i in range(count):
        event_id = f"evt_load_{i:07d}"
        event_type = EVENT_TYPES[i % len(EVENT_TYPES)]
        created = FIRST_BUSINESS_DAY + timedelta(seconds=int(span * i / max(count, 1)))
        amount = rng.randint(100, 50_000)
        if event_type == "payout.paid":
            obj: dict[str, Any] = {
                "id": f"po_{i:07d}",
                "object": "payout",
                "amount": amount,
                "currency": "eur",
                "arrival_date": int((created + timedelta(days=2)).timestamp()),
                "status": "paid",
            }
        else:
            obj = {
                "id": f"ch_{i:07d}",
                "object": "charge",
                "amount": amount,
                "amount_refunded": amount if event_type == "charge.refunded" else 0,
                "currency": "eur",
                "customer": f"cus_{rng.randint(1, 2_000):05d}",
                "payment_intent": f"pi_{i:07d}",
                "status": "succeeded",
            }
        body = {
            "id": event_id,
            "object": "event",
            "api_version": "2024-06-20",
            "created": int(created.timestamp()),
            "type": event_type,
            "livemode": False,
            "pending_webhooks": 1,
            "data": {"object": obj},
        }
        events.append((event_id, json.dumps(body, separators=(",", ":")).encode()))
    return events


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class _Receiver:
    """The receiver subprocess; restarted on the same port after a kill."""

    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dagster_project.services.webhook_receiver", "--port", str(self.port)],
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=log,
            stderr=log,
        )
        log.close()
        self.starts += 1

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"receiver exited with {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"receiver not ready after {timeout}s; see {self.log_path}")

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class _Stats:
    attempts: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    acknowledged: set[str] = field(default_factory=set)
    acks: int = 0
    first_ack_after_kill: float | None = None


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _drive(
    base_url: str,
    receiver: _Receiver,
    events: list[tuple[str, bytes]],
    duplicates: set[int],
    secret: str,
    *,
    concurrency: int,
    kill: bool,
    deadline_seconds: float,
) -> tuple[_Stats, dict[str, float]]:
    stats = _Stats()
    total_deliveries = len(events) + len(duplicates)
    queue: asyncio.Queue[tuple[int, bool]] = asyncio.Queue()
    for index in range(len(events)):
        queue.put_nowait((index, False))
    timeline: dict[str, float] = {}
    half_way = asyncio.Event()
    started = time.perf_counter()

    async def deliver(client: httpx.AsyncClient, index: int) -> str:
        event_id, body = events[index]
        backoff = 0.05
        while True:
            if time.perf_counter() - started > deadline_seconds:
                raise TimeoutError(f"{event_id} not acknowledged within {deadline_seconds}s")
            headers = {
                "Stripe-Signature": sign_stripe(body, secret, int(time.time())),
                "Content-Type": "application/json",
            }
            stats.attempts += 1
            sent = time.perf_counter()
            try:
                response = await client.post("/webhooks/stripe", content=body, headers=headers)
            except httpx.HTTPError as error:
                stats.failures[type(error).__name__] += 1
            else:
                if 200 <= response.status_code < 300:
                    stats.latencies.append(time.perf_counter() - sent)
                    killed = timeline.get("killed")
                    if killed is not None and sent > killed and stats.first_ack_after_kill is None:
                        stats.first_ack_after_kill = time.perf_counter()
                    return str(response.json()["status"])
                stats.failures[f"http_{response.status_code}"] += 1
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # jittered, like a PSP's retry schedule
            backoff = min(backoff * 2, 1.0)

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            index, is_duplicate = await queue.get()
            try:
                outcome = await deliver(client, index)
                stats.outcomes[("resend:" if is_duplicate else "first:") + outcome] += 1
                stats.acknowledged.add(events[index][0])
                stats.acks += 1
                if stats.acks >= total_deliveries // 2:
                    half_way.set()
                if index in duplicates and not is_duplicate:
                    queue.put_nowait((index, True))  # resend an event that was already acknowledged
            finally:
                queue.task_done()

    async def killer() -> None:
        await half_way.wait()
        await asyncio.to_thread(receiver.kill)
        timeline["killed"] = time.perf_counter()
        await asyncio.to_thread(receiver.start)
        await asyncio.to_thread(receiver.wait_ready)
        timeline["ready_again"] = time.perf_counter()

    # one single-connection client per worker: httpx's shared pool rescans every connection on each request,
    # which made the client, not the receiver, the bottleneck at 50 connections
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10.0))
            for _ in range(concurrency)
        ]
        workers = [asyncio.create_task(worker(client)) for client in clients]
        kill_task = asyncio.create_task(killer()) if kill else None
        join = asyncio.create_task(queue.join())
        done, _ = await asyncio.wait([join, *workers], return_when=asyncio.FIRST_COMPLETED)
        for task in workers:
            task.cancel()
        if kill_task is not None:
            await kill_task
        for task in done:
            if task is not join:
                task.result()  # re-raise a worker's error (deadline)
    timeline["elapsed"] = time.perf_counter() - started
    if "killed" in timeline:
        timeline["restart_to_ready_s"] = timeline["ready_again"] - timeline["killed"]
        if stats.first_ack_after_kill is not None:
            timeline["kill_to_first_ack_s"] = stats.first_ack_after_kill - timeline["killed"]
    return stats, timeline


def run(
    events: int = 20_000,
    *,
    concurrency: int = 50,
    duplicate_ratio: float = 0.10,
    kill: bool = True,
    workdir: Path | None = None,
    deadline_seconds: float = 900.0,
    seed: int = 7,
) -> dict[str, Any]:
    """Send `events` distinct signed events (+ `duplicate_ratio` resends), kill the receiver half-way, verify.

    The work directory (inbox, receiver log) is kept; its paths are in the result.
    """
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="webhooks-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    inbox_path = workdir / "inbox.sqlite"
    inbox_url = f"sqlite:///{inbox_path}"
    secret = "whsec_load_" + secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDALLION_WEBHOOK_")}
    env |= {
        "MEDALLION_DATA_DIR": str(workdir),
        "MEDALLION_WEBHOOK_INBOX_URL": inbox_url,
        "MEDALLION_WEBHOOK_SECRETS_STRIPE": secret,
    }
    port = _free_port()
    receiver = _Receiver(port=port, env=env, log_path=workdir / "receiver.log")

    sent = make_stripe_events(events, seed=seed)
    rng = random.Random(seed)
    duplicates = set(rng.sample(range(events), int(events * duplicate_ratio)))

    receiver.start()
    try:
        receiver.wait_ready()
        stats, timeline = asyncio.run(
            _drive(
                f"http://127.0.0.1:{port}",
                receiver,
                sent,
                duplicates,
                secret,
                concurrency=concurrency,
                kill=kill,
                deadline_seconds=deadline_seconds,
            )
        )
    finally:
        receiver.stop()

    with Inbox(inbox_url) as inbox:
        with inbox.engine.connect() as conn:
            rows = conn.execute(sa.select(webhook_events.c.event_id, webhook_events.c.body_sha256)).all()
        conflicts = len(inbox.conflicts())
    stored = {event_id: digest for event_id, digest in rows}
    expected = {event_id: sha256_hex(body) for event_id, body in sent}
    log_text = receiver.log_path.read_text(errors="replace")
    elapsed = timeline["elapsed"]
    return {
        "distinct_events_sent": events,
        "duplicate_resends": len(duplicates),
        "deliveries": events + len(duplicates),
        "http_requests": stats.attempts,
        "failed_attempts": sum(stats.failures.values()),
        "failures_by_kind": dict(stats.failures),
        "acknowledged_deliveries": stats.acks,
        "acknowledged_events": len(stats.acknowledged),
        "outcomes": dict(stats.outcomes),
        "elapsed_s": round(elapsed, 2),
        "requests_per_s": round(stats.attempts / elapsed, 1),
        "acks_per_s": round(stats.acks / elapsed, 1),
        "latency_p50_ms": round(_percentile(stats.latencies, 0.50) * 1000, 2),
        "latency_p99_ms": round(_percentile(stats.latencies, 0.99) * 1000, 2),
        "latency_max_ms": round(max(stats.latencies, default=float("nan")) * 1000, 2),
        "receiver_starts": receiver.starts,
        "restart_to_ready_s": round(timeline.get("restart_to_ready_s", 0.0), 2),
        "kill_to_first_ack_s": round(timeline.get("kill_to_first_ack_s", 0.0), 2),
        "inbox_rows": len(rows),
        "distinct_events_in_inbox": len(stored),
        "acknowledged_but_missing": len(stats.acknowledged - stored.keys()),
        "acknowledged_event_ids": sorted(stats.acknowledged),
        "duplicates_stored": len(rows) - len(stored),
        "body_mismatches": sum(1 for event_id, digest in stored.items() if expected.get(event_id) != digest),
        "conflicts": conflicts,
        "secret_in_log": secret in log_text,
        "body_in_log": any(body.decode() in log_text for _, body in sent[:100]),
        "inbox_url": inbox_url,
        "inbox_path": str(inbox_path),
        "workdir": str(workdir),
        "receiver_log": str(receiver.log_path),
    }


def _print_table(result: dict[str, Any]) -> None:
    shown = {k: v for k, v in result.items() if k != "acknowledged_event_ids"}
    width = max(len(key) for key in shown)
    for key, value in shown.items():
        print(f"{key:<{width}}  {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--duplicate-ratio", type=float, default=0.10)
    parser.add_argument("--no-kill", action="store_true", help="do not kill the receiver half-way")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--noop-port", type=int, default=None, help="serve the no-op endpoint on this port and stay")
    parser.add_argument("--throughput", action="store_true", help="throughput beside the no-op endpoint instead")
    args = parser.parse_args()
    if args.noop_port is not None:
        _serve_noop(args.noop_port)
        return
    if args.throughput:
        _print_table(throughput(concurrency=args.concurrency))
        return
    result = run(
        args.events,
        concurrency=args.concurrency,
        duplicate_ratio=args.duplicate_ratio,
        kill=not args.no_kill,
        workdir=args.workdir,
    )
    _print_table(result)
    healthy = (
        result["acknowledged_but_missing"] == 0
        and result["duplicates_stored"] == 0
        and result["body_mismatches"] == 0
        and result["acknowledged_events"] == result["distinct_events_sent"]
    )
    sys.exit(0 if healthy else 1)


# --- throughput beside a no-op endpoint ------------------------------------------------------------------------

POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def noop_app() -> Any:
    """The same server stack (uvicorn, the platform's limits, Starlette) answering at once: what the load client
    and the HTTP layer cost on this machine, measured beside the receiver in the same run."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def accept(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"status": "stored"})

    async def ready(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ready"})

    return Starlette(
        routes=[Route("/webhooks/{provider}", accept, methods=["POST"]), Route("/readyz", ready, methods=["GET"])]
    )


def _serve_noop(port: int) -> None:
    import uvicorn

    from dagster_project.services import http_server

    uvicorn.run(noop_app(), host="127.0.0.1", port=port, **http_server.uvicorn_options())


@dataclass
class _Phase:
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    # latency percentiles (seconds); over several wrk runs, the highest of theirs: no pooled figure is higher
    p50: float = 0.0
    p99: float = 0.0
    # CPU seconds spent inside the measured window by the load client, the server process(es) and, on
    # PostgreSQL, the database backends serving them
    cpu: Counter[str] = field(default_factory=Counter)

    def figures(self) -> dict[str, Any]:
        per_request = {
            f"cpu_us_{role}": round(seconds / self.requests * 1e6, 1) if self.requests else 0.0
            for role, seconds in sorted(self.cpu.items())
        }
        return {
            "requests": self.requests,
            "errors": dict(self.errors),
            "req_per_s": round(self.requests / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(self.p50 * 1000, 1),
            "p99_ms": round(self.p99 * 1000, 1),
        } | per_request


# wrk, in C, loads the machine less per request than any Python client could: the client shares the cores with
# the server it measures. Each request is a distinct event signed just before the turn; the script sends them in
# turn and reports what it saw as JSON on its last line.
WRK_SCRIPT = r"""
local requests, sent = {}, 0
function init(args)
  local file = assert(io.open(args[1], "rb"))
  local data = file:read("*a")
  file:close()
  local at = 1
  while at <= #data do
    local stop = data:find("\0", at, true)
    requests[#requests + 1] = data:sub(at, stop - 1)
    at = stop + 1
  end
end
function request()
  sent = sent + 1
  return requests[(sent - 1) % #requests + 1]
end
function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "microseconds": %d, "p50_us": %d, "p99_us": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""
# More distinct events than a turn can send at this rate: an event sent twice is answered without a write.
WRK_MAX_RATE = 20_000


def _signed_requests(path: Path, port: int, secret: str, prefix: str, count: int) -> Path:
    """`count` raw HTTP requests, each a distinct event with its `Stripe-Signature`, NUL-separated, for wrk."""
    templates = [body for _, body in make_stripe_events(1000)]
    now = int(time.time())
    with path.open("wb") as out:
        for i in range(count):
            body = templates[i % len(templates)].replace(b"evt_load_", f"evt_{prefix}_{i // len(templates)}_".encode())
            head = (
                f"POST /webhooks/stripe HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
                f"stripe-signature: {sign_stripe(body, secret, now)}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            )
            out.write(head.encode() + body + b"\0")
    return path


def _wrk(
    ports: list[int],
    secret: str,
    prefix: str,
    workdir: Path,
    *,
    concurrency: int,
    seconds: float,
    meter: Callable[[], Counter[str]] | None = None,
) -> _Phase:
    """`concurrency` keep-alive connections, spread evenly over `ports` (one wrk per port), each posting the next
    signed event as soon as its last one was answered, for `seconds` (whole ones: wrk's unit); `meter`
    (cumulative CPU seconds by role) is read before and after. Over several ports, p50 and p99 are the highest
    port's: pooled ones are no higher."""
    script = workdir / "wrk.lua"
    script.write_text(WRK_SCRIPT)
    count = int(WRK_MAX_RATE * seconds / len(ports)) + 1000
    runs = []
    for i, port in enumerate(ports):
        requests = _signed_requests(workdir / f"wrk-{prefix}-{i}.bin", port, secret, f"{prefix}_{i}", count)
        connections = concurrency // len(ports) + (i < concurrency % len(ports))
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script)]
        runs.append((argv + [f"http://127.0.0.1:{port}", "--", str(requests)], requests))
    before = meter() if meter else Counter()
    processes = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for argv, _ in runs]
    phase = _Phase()
    client_cpu = 0.0
    p50s, p99s = [], []
    for process, (_, requests) in zip(processes, runs, strict=True):
        assert process.stdout is not None
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"wrk failed ({process.returncode}):\n{output}")
        figures = json.loads(output.strip().splitlines()[-1])
        if figures["requests"] > count:
            raise RuntimeError(f"wrk sent {figures['requests']} requests, more than the {count} distinct events")
        requests.unlink()
        client_cpu += usage.ru_utime + usage.ru_stime
        phase.seconds = max(phase.seconds, figures["microseconds"] / 1e6)
        phase.requests += figures["requests"] - figures["status"]
        for kind in ("connect", "read", "write", "status", "timeout"):
            if figures[kind]:
                phase.errors[kind] += figures[kind]
        p50s.append(figures["p50_us"] / 1e6)
        p99s.append(figures["p99_us"] / 1e6)
    after = meter() if meter else Counter()
    phase.cpu = Counter({role: after[role] - before[role] for role in after})
    phase.cpu["client"] = client_cpu
    phase.p50 = max(p50s)
    phase.p99 = max(p99s)
    return phase


def _cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of the processes `pids` and their children (uvicorn's workers)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for p in [process, *process.children(recursive=True)]:
                times = p.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def _signed_bodies(secret: str, prefix: str) -> Iterator[tuple[bytes, str]]:
    """Endless distinct events (the load test's bodies, renumbered) with their `Stripe-Signature`, signed when sent."""
    templates = [body for _, body in make_stripe_events(1000)]
    for i in itertools.count():
        body = templates[i % len(templates)].replace(b"evt_load_", f"evt_{prefix}_{i // len(templates)}_".encode())
        yield body, sign_stripe(body, secret, int(time.time()))


def _start(argv: list[str], env: dict[str, str], log: Path, port: int) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        process = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=out)
    receiver = _Receiver(port=port, env=env, log_path=log, process=process)
    receiver.wait_ready()
    return process


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def throughput(
    *,
    concurrency: int = 32,
    seconds: float = 20.0,
    rounds: int = 4,
    warmup: float = 1.0,
    postgres_url: str = POSTGRES_URL,
) -> dict[str, Any]:
    """Requests per second and latency at `concurrency` for the no-op endpoint, the receiver on SQLite, and one
    and two receiver processes on one PostgreSQL inbox, `seconds` each.

    The four are measured in turn, `rounds` times over (each turn `seconds / rounds` long), so that whatever
    else the machine does weighs on all of them alike; req/s is the median of the turns, p50 and p99 the highest
    turn's.
    Each also gets the CPU time it cost per request: the load client's, the server processes' and the
    PostgreSQL backends' serving them. On a machine where the three share a few cores, these say how many
    requests per second the cores could give at most, whatever the wall clock shows.
    """
    if shutil.which("wrk") is None:
        raise RuntimeError("the throughput benchmark's load client is wrk: `make wrk` installs it")
    workdir = Path(tempfile.mkdtemp(prefix="webhooks-throughput-"))
    secret = "whsec_bench_" + secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDALLION_WEBHOOK_")}
    env |= {"MEDALLION_DATA_DIR": str(workdir), "MEDALLION_WEBHOOK_SECRETS_STRIPE": secret}
    receiver = [sys.executable, "-m", "dagster_project.services.webhook_receiver", "--port"]
    noop = [sys.executable, "-m", "benchmarks.webhooks_load", "--noop-port"]

    schema = f"bench_webhooks_{secrets.token_hex(4)}"
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        synchronous_commit = conn.exec_driver_sql("SHOW synchronous_commit").scalar()
    separator = "&" if "?" in postgres_url else "?"
    # the application name finds the receivers' backends, whose CPU is counted
    pg_url = f"{postgres_url}{separator}options=-csearch_path%3D{schema}&application_name={schema}"
    processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, argv: list[str], extra: dict[str, str]) -> int:
        port = _free_port()
        processes[name] = _start([*argv, str(port)], env | extra, workdir / f"{name}.log", port)
        return port

    def backends() -> list[int]:
        with admin.connect() as conn:
            query = "SELECT pid FROM pg_stat_activity WHERE application_name = %(name)s"
            return [pid for (pid,) in conn.exec_driver_sql(query, {"name": schema})]

    def meter(servers: list[str], database: bool) -> Callable[[], Counter[str]]:
        def read() -> Counter[str]:
            cpu = Counter({"server": _cpu_seconds(processes[name].pid for name in servers)})
            if database:
                cpu["database"] = _cpu_seconds(backends())
            return cpu

        return read

    try:
        migrate(pg_url)
        noop_port = start("noop", noop, {})
        sqlite_port = start(
            "sqlite", receiver, {"MEDALLION_WEBHOOK_INBOX_URL": f"sqlite:///{workdir / 'inbox.sqlite'}"}
        )
        pg_ports = [start(f"postgres_{i}", receiver, {"MEDALLION_WEBHOOK_INBOX_URL": pg_url}) for i in (1, 2)]
        targets = {
            "noop": ([noop_port], meter(["noop"], False)),
            "sqlite": ([sqlite_port], meter(["sqlite"], False)),
            "postgres_1": (pg_ports[:1], meter(["postgres_1"], True)),
            "postgres_2": (pg_ports, meter(["postgres_1", "postgres_2"], True)),
        }
        turns: dict[str, list[_Phase]] = {name: [] for name in targets}
        for turn in range(rounds):
            for name, (ports, read) in targets.items():
                # the warm-up's events are others than the measured turn's, and its figures are dropped
                _wrk(ports, secret, f"{name}_{turn}_warm", workdir, concurrency=concurrency, seconds=warmup)
                phase = _wrk(
                    ports,
                    secret,
                    f"{name}_{turn}",
                    workdir,
                    concurrency=concurrency,
                    seconds=seconds / rounds,
                    meter=read,
                )
                turns[name].append(phase)
        with Inbox(pg_url) as inbox:
            postgres_rows = inbox.count()
    finally:
        _stop(list(processes.values()))
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()

    results: dict[str, Any] = {"concurrency": concurrency, "seconds": seconds, "rounds": rounds}
    results["cores"] = len(os.sched_getaffinity(0))
    for name, phases in turns.items():
        pooled = _Phase(
            requests=sum(p.requests for p in phases),
            seconds=sum(p.seconds for p in phases),
            p50=max(p.p50 for p in phases),
            p99=max(p.p99 for p in phases),
        )
        for p in phases:
            pooled.errors.update(p.errors)
            pooled.cpu.update(p.cpu)
        figures = pooled.figures()
        figures["req_per_s"] = round(statistics.median(p.requests / p.seconds for p in phases), 1)
        figures["req_per_s_turns"] = [round(p.requests / p.seconds) for p in phases]
        results[name] = figures
    results["postgres_synchronous_commit"] = synchronous_commit
    results["postgres_rows"] = postgres_rows
    results["workdir"] = str(workdir)
    return results


def scale_out_ceiling(one: dict[str, Any], two: dict[str, Any], cores: int) -> dict[str, float]:
    """The most requests per second `cores` allow one receiver process and two, from what each request cost in
    CPU in `throughput` (its ``postgres_1`` and ``postgres_2`` figures).

    The load client, the receivers and the database share the cores. A receiver process runs Python on one core
    at a time, so one process can go no faster than one core gives it; two can use every core, but the client's
    and the database's CPU per request take their part of them.
    """

    def seconds(figures: dict[str, Any], role: str) -> float:
        return float(figures.get(f"cpu_us_{role}", 0.0)) / 1e6

    def total(figures: dict[str, Any]) -> float:
        return sum(seconds(figures, role) for role in ("client", "server", "database"))

    one_rate = min(1 / seconds(one, "server"), cores / total(one))
    two_rate = min(2 / seconds(two, "server"), cores / total(two))
    return {"one": one_rate, "two": two_rate, "ratio": two_rate / one_rate}


if __name__ == "__main__":
    main()
