"""The lakehouse beyond one run: reads pruned to the partition window, partitions fanned out over processes on
an object store, and the peak memory of one partition's work.

    uv run python -m benchmarks lakehouse [--quick] [--large]

- pruning: the one-day incremental build of the customers slice (dbt, as Dagster runs it) with 1, 30 and 90
  days of history already built, 100,000 bronze rows a day;
- fan-out: 8 business dates, each landed, loaded into bronze through the bronze engine and built into silver
  (the `dbt_silver_daily` step) by its own process on an `s3://` lake served by moto on loopback, against
  one process doing the same 8 dates one after the other;
- memory: peak RSS of a bronze hop (land + load) and of a dbt build of the customers slice, one partition of
  1M rows (and 10M with --large).

dbt runs as a subprocess, as Dagster runs it; a figure of peak RSS is that process's own (`benchmarks.process`),
not the largest of every child so far nor what this process held when it started it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import multiprocessing
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from benchmarks.process import run_measured
from dagster_project import settings
from dagster_project.lib.dbt_plugins.run_file import write_run
from dagster_project.lib.lake import LOST_COMMIT_RACE, Lake

PII_KEY = "bench-only-hmac-key-0123456789abcdef"
ROWS_PER_DAY = 100_000
HISTORIES = (1, 30, 90)
FAN_OUT_PARTITIONS = 8
MEMORY_SIZES = (1_000_000,)
LARGE_MEMORY_SIZES = (1_000_000, 10_000_000)
# Every history ends on this business date, so each measured build gets the same vars.
LAST_DAY = dt.date(2025, 12, 31)
CUSTOMERS_SLICE = ("+stg_acme__customers", "+dim_customers", "+fct_customer_daily_metrics")
# What the issue measured before silver and gold moved to the lake: 29.6 s with 1 day, 57.7 s with 30.
RATIO_30D_BEFORE = 1.95
RATIO_TARGET = 1.2
TESTS_SHOWN = 5

# Customers of one business date. Day 0 brings `rows` new customers; every later day brings a fifth of its
# rows as new customers and updates four fifths drawn from the customers known so far (some twice in one day,
# as a CRM export does). $1 = day number from 0, $2 = rows per day, $3 = business date.
_CUSTOMERS_SQL = """
with ids as (
    select
        i,
        cast(case
            when $1 = 0 then i + 1
            when i < $2 // 5 then $2 + ($1 - 1) * ($2 // 5) + i + 1
            else hash($1, i) % ($2 + ($1 - 1) * ($2 // 5)) + 1
        end as bigint) as customer_id,
    from range($2) as t(i)
),
customers as (
    select
        i,
        customer_id,
        'customer' || customer_id || '@mail.example.com' as email,
        'First' || (customer_id % 977) as first_name,
        'Last' || (customer_id % 1013) as last_name,
        ['DE', 'FR', 'NL', 'GB', 'US'][1 + customer_id % 5] as country_code,
        date '2020-01-01' + cast(customer_id % 1500 as integer) as signup_date,
        cast(((customer_id * 7 + $1) % 500000) / 100.0 as decimal(12, 2)) as lifetime_value,
        ['active', 'active', 'inactive', 'closed'][1 + (customer_id + $1) % 4] as status,
        cast($3 as timestamptz) + to_seconds(i % 86400) as updated_at,
        cast($3 as date) as business_date,
    from ids
)
select {columns} from customers
"""
_BRONZE_COLUMNS = """
    customer_id, email, first_name, last_name, country_code, signup_date, lifetime_value, status, updated_at,
    business_date,
    'acme_customers' as _source,
    'acme_customers_' || $3 || '_seq-00001_crc32-00000000.csv' as _source_file,
    i + 1 as _source_row,
    repeat('0', 64) as _checksum_sha256,
    cast(1 as integer) as _schema_version,
    cast($3 as timestamptz) + interval 6 hour as _received_at,
    cast($3 as timestamptz) + interval 7 hour as _ingested_at,
    'bench' as _run_id,
"""
# The partner's CSV export of the same rows; one row in a thousand breaks the e-mail rule (quarantined).
_CSV_COLUMNS = """
    customer_id,
    case when i % 1000 = 999 then 'not-an-email' else email end as email,
    first_name, last_name, country_code,
    strftime(signup_date, '%Y-%m-%d') as signup_date,
    cast(lifetime_value as varchar) as lifetime_value,
    status,
    strftime(updated_at, '%Y-%m-%dT%H:%M:%SZ') as updated_at,
"""


def _customers(con: duckdb.DuckDBPyConnection, columns: str, day_number: int, day: dt.date, rows: int):
    con.execute("set TimeZone = 'UTC'")
    return con.execute(_CUSTOMERS_SQL.format(columns=columns), [day_number, rows, day.isoformat()])


def bronze_day(day_number: int, day: dt.date, rows: int) -> Any:
    """One business date of bronze customers, as the bronze hop writes them (an Arrow table, bronze schema)."""
    import pyarrow as pa

    from dagster_project.lib.bronze.contract import bronze_schema
    from dagster_project.lib.sources.registry import CUSTOMERS

    with duckdb.connect() as con:
        table = _customers(con, _BRONZE_COLUMNS, day_number, day, rows).to_arrow_table()
    schema = bronze_schema(CUSTOMERS)
    return pa.Table.from_arrays([table.column(f.name).cast(f.type) for f in schema], schema=schema)


def write_bronze_history(lake: Lake, days: int, rows: int) -> list[dt.date]:
    """`days` business dates of bronze customers ending on LAST_DAY, one Delta commit per date as loads make."""
    from deltalake import write_deltalake

    dates = [LAST_DAY - dt.timedelta(days=days - 1 - n) for n in range(days)]
    for n, day in enumerate(dates):
        write_deltalake(
            lake.table("bronze", "customers"),
            bronze_day(n, day, rows),
            mode="append",
            partition_by=["business_date"],
            storage_options=lake.delta_options(),
        )
    return dates


def partner_file(folder: Path, day_number: int, day: dt.date, rows: int) -> Path:
    """The partner's customers export for `day`, named by the file-name contract (its CRC32 in the name)."""
    from dagster_project.lib.checksums import digest_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{day.isoformat()}.csv.tmp"
    with duckdb.connect() as con:
        con.execute("set TimeZone = 'UTC'")
        query = _CUSTOMERS_SQL.format(columns=_CSV_COLUMNS)
        # COPY's target cannot be a parameter; the path is ours, not input.
        con.execute(
            f"copy ({query}) to '{str(tmp).replace(chr(39), chr(39) * 2)}' (header, delimiter ',')",
            [day_number, rows, day.isoformat()],
        )
    crc32 = digest_file(tmp).crc32
    path = folder / f"acme_customers_{day.isoformat()}_seq-00001_crc32-{crc32}.csv"
    tmp.rename(path)
    return path


# -- running dbt and measured children ------------------------------------------------------------------


@dataclass
class Measured:
    seconds: float
    peak_rss_mib: float
    returncode: int
    output: str
    timings: dict[str, float] = field(default_factory=dict)  # model name (or "tests") -> seconds
    test_timings: dict[str, float] = field(default_factory=dict)  # data test name -> seconds
    cpu_seconds: float = 0.0  # user + system time of the process (and what it waited for)


def measure(cmd: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path) -> Measured:
    """Run `cmd` to completion; wall time, CPU time and peak RSS of that process (and what it waited for)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        usage = run_measured(cmd, env=env, cwd=cwd, stdout=out)
    return Measured(usage.seconds, usage.peak_rss_mib, usage.returncode, log.read_text(), cpu_seconds=usage.cpu_seconds)


def dbt_command(args: Sequence[str], target: Path, profiles_dir: Path | None = None) -> list[str]:
    project_dir = settings.dbt_project_dir()
    return [
        str(Path(sys.executable).with_name("dbt")),
        *args,
        "--project-dir",
        str(project_dir),
        "--profiles-dir",
        str(profiles_dir or project_dir),
        "--target-path",
        str(target),
        "--log-path",
        str(target / "logs"),
    ]


def dbt(
    args: Sequence[str],
    *,
    lake_root: str,
    target: Path,
    window: Sequence[str] | None = None,
    memory_limit: str | None = None,
) -> Measured:
    """Run the dbt CLI on the project as Dagster's dbt resource does: the lake and the `window` (first and last
    business date) in the command's run file, the PII key in its environment. Wall and CPU time, peak RSS, and
    seconds per model and per data test (run_results.json).

    `memory_limit` runs it with the project's profile plus DuckDB's `memory_limit`, as DuckDB sets it
    itself in a pod (80% of the cgroup's memory limit)."""
    target = target.resolve()  # dbt runs in the project folder
    (target / "run_results.json").unlink(missing_ok=True)
    write_run(target, lake_root, window)
    profiles = _profile_with_memory_limit(target / "profile", memory_limit) if memory_limit else None
    run = measure(
        dbt_command(args, target, profiles),
        env={**os.environ, "MEDALLION_PII_HMAC_KEY": PII_KEY, "DBT_USE_COLORS": "false"},
        cwd=settings.dbt_project_dir(),
        log=target / "dbt.out",
    )
    results = target / "run_results.json"
    if results.exists() and args[0] in ("build", "run"):
        for r in json.loads(results.read_text())["results"]:
            kind, _, name = r["unique_id"].split(".", 2)
            key = name.rsplit(".", 1)[-1] if kind == "model" else "tests"
            run.timings[key] = run.timings.get(key, 0.0) + r["execution_time"]
            if kind == "test":
                run.test_timings[name.rsplit(".", 1)[0]] = r["execution_time"]
    return run


def _profile_with_memory_limit(folder: Path, memory_limit: str) -> Path:
    import yaml

    profiles = yaml.safe_load((settings.dbt_project_dir() / "profiles.yml").read_text())
    for output in profiles["medallion"]["outputs"].values():
        output.setdefault("settings", {})["memory_limit"] = memory_limit
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "profiles.yml").write_text(yaml.safe_dump(profiles))
    return folder


def run_pod_memory() -> tuple[str, int]:
    """The run pods' memory limit in the Helm chart (helm/medallion/values.yaml), and that in bytes."""
    import yaml

    values = yaml.safe_load((settings.project_root() / "helm" / "medallion" / "values.yaml").read_text())
    limit = str(values["runs"]["resources"]["limits"]["memory"])
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9}
    unit = next((u for u in sorted(units, key=len, reverse=True) if limit.endswith(u)), "")
    return limit, int(float(limit.removesuffix(unit)) * units.get(unit, 1))


def pod_duckdb_limit(limit_bytes: int) -> str:
    """DuckDB's own default in a pod: 80% of the memory the cgroup allows."""
    return f"{int(limit_bytes * 0.8) // 2**20}MiB"


def _checked(run: Measured, what: str) -> Measured:
    if run.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {run.returncode}):\n{run.output[-4000:]}")
    return run


# -- 1. pruning -----------------------------------------------------------------------------------------


def pruning(
    work: Path, histories: Sequence[int] = HISTORIES, rows: int = ROWS_PER_DAY, *, pod_limit: str | None = None
) -> list[dict[str, Any]]:
    """For each history length: bronze for that many days, every model built once over all of it (a full
    `dbt run`, no window), then the measured one-day incremental `dbt build` of the last day; with
    `pod_limit` (a DuckDB memory_limit) the same build again under that limit."""
    results = []
    # Each measured build is preceded by a parse in its target folder, so each parses alike (partially).
    lake_dir, target = (work / "pruning" / "lake").resolve(), work / "pruning" / "target"
    lake = Lake.parse(str(lake_dir))
    window = (LAST_DAY.isoformat(), LAST_DAY.isoformat())
    build = ["build", "--select", *CUSTOMERS_SLICE]
    for days in histories:
        shutil.rmtree(lake_dir, ignore_errors=True)
        write_bronze_history(lake, days, rows)
        history = _checked(
            dbt(["run", "--select", *CUSTOMERS_SLICE], lake_root=lake.root, target=target),
            f"history build ({days} days)",
        )
        _checked(dbt(["parse"], lake_root=lake.root, target=target), "dbt parse")
        run = _checked(dbt(build, lake_root=lake.root, target=target, window=window), f"one-day build ({days} days)")
        result = {
            "days": days,
            "seconds": run.seconds,
            "cpu_seconds": run.cpu_seconds,
            "peak_rss_mib": run.peak_rss_mib,
            "timings": run.timings,
            "test_timings": run.test_timings,
            "history_seconds": history.seconds,
            "silver_versions_rows": _count(lake, "silver.stg_acme__customer_versions"),
        }
        if pod_limit:
            pod_target = work / "pruning" / "pod"
            pod = dbt(build, lake_root=lake.root, target=pod_target, window=window, memory_limit=pod_limit)
            result["pod"] = _pod_result(pod)
        results.append(result)
    shutil.rmtree(lake_dir, ignore_errors=True)
    return results


def _pod_result(run: Measured) -> dict[str, Any]:
    return {
        "seconds": run.seconds,
        "peak_rss_mib": run.peak_rss_mib,
        "ok": run.returncode == 0,
        "error": None if run.returncode == 0 else _first_error(run.output),
    }


def _count(lake: Lake, table: str) -> int:
    with lake.connect() as con:
        con.execute("set enable_progress_bar = false")
        lake.attach(con)
        return con.execute(f"select count(*) from {table}").fetchone()[0]


# -- 2. fan-out -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionJob:
    """One business date for a worker: its partner file, the lake, and the dbt step to run after the load."""

    lake_root: str
    csv: str
    scratch: str
    dbt_select: str
    run_id: str


def process_partition(job: PartitionJob, *, silver: bool = True) -> dict[str, Any]:
    """Land the date's file, load its bronze partition through the engine, then (`silver`) run the silver
    daily step for the date, run again after a lost commit race as the Dagster dbt steps are. Runs in a worker
    process."""
    from dagster_project.lib.bronze.engine import load_partition
    from dagster_project.lib.bronze.readers.partner_files import PartnerFilesReader
    from dagster_project.lib.intake.landing import land_file, landed_files
    from dagster_project.lib.sources.naming import parse_file_name
    from dagster_project.lib.sources.registry import CUSTOMERS

    started = time.perf_counter()
    lake = Lake.parse(job.lake_root, settings.lake_storage_options())
    scratch = Path(job.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    staged = scratch / Path(job.csv).name
    shutil.copyfile(job.csv, staged)  # landing deletes the staged copy once the file is in the lake
    parsed = parse_file_name(staged.name)
    day = parsed.business_date
    out: dict[str, Any] = {"business_date": day, "run_id": job.run_id, "ok": False, "bronze_conflicts": 0}
    try:
        landed = land_file(
            lake, parsed, staged, source="bench", source_uri=f"bench:{staged.name}", received_at=dt.datetime.now(dt.UTC)
        )
        out["landing"] = landed.status

        def on_event(event: Any) -> None:
            if event.kind == "conflict":
                out["bronze_conflicts"] += 1

        load = load_partition(
            CUSTOMERS,
            lambda: contextlib.nullcontext(
                PartnerFilesReader(CUSTOMERS, landed_files(lake, CUSTOMERS.name, day), day, lake=lake)
            ),
            lake=lake,
            run_id=job.run_id,
            business_date=day,
            on_event=on_event,
        )
        out.update(
            received=load.received,
            loaded=load.loaded,
            quarantined=load.quarantined,
            load=load.load,
            bronze_version=load.bronze_version,
            quarantine_version=load.quarantine_version,
            bronze_seconds=time.perf_counter() - started,
        )
        out.update(_silver_daily(job, day, scratch) if silver else {"ok": True})
    except Exception as exc:  # reported as a failed run, with the reason
        out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    out["seconds"] = time.perf_counter() - started
    return out


def _silver_daily(job: PartitionJob, day: str, scratch: Path) -> dict[str, Any]:
    """`dbt build` of the silver daily step for one date, run again after a lost commit race like the Dagster step
    (`CONFLICT_RETRY`, `conflict_delay`); any other failure ends it."""
    errors: list[str] = []
    attempt = 0
    while True:
        attempt += 1
        run = dbt(["build", "--select", job.dbt_select], lake_root=job.lake_root, target=scratch, window=(day, day))
        if run.returncode == 0:
            return {"ok": True, "dbt_attempts": attempt, "dbt_errors": errors, "dbt_peak_rss_mib": run.peak_rss_mib}
        errors.append(_first_error(run.output))
        (scratch / f"dbt-attempt-{attempt}.out").write_text(run.output)
        # Imported only on a failure: the rule the Dagster dbt steps run by.
        from dagster_project.defs.transform.assets import CONFLICT_RETRY, conflict_delay

        if LOST_COMMIT_RACE not in run.output or attempt == CONFLICT_RETRY.attempts:
            return {"ok": False, "dbt_attempts": attempt, "dbt_errors": errors, "error": errors[-1]}
        time.sleep(conflict_delay(attempt - 1))


def _first_error(output: str) -> str:
    """The line of a failed dbt run that says why: a lost Delta commit if it was one, else the first error."""
    lines = [line.strip() for line in output.splitlines()]
    for words in ((LOST_COMMIT_RACE,), ("Error", "error")):
        found = next((line for line in lines if any(w in line for w in words)), None)
        if found:
            return found[:300]
    return lines[-1][:300] if lines else "no output"


def _quiet(job: PartitionJob) -> None:
    """Send a worker's own output (DuckDB's progress bars, library warnings) to a file of its scratch folder:
    what it reports goes through the result queue."""
    Path(job.scratch).mkdir(parents=True, exist_ok=True)
    log = os.open(Path(job.scratch).parent / f"{Path(job.scratch).name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)


def _worker(job: PartitionJob, results: Any) -> None:
    _quiet(job)
    results.put(process_partition(job))


def _serial_worker(jobs: list[PartitionJob], results: Any) -> None:
    _quiet(jobs[0])
    for job in jobs:
        results.put(process_partition(job))


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 server on loopback; the standard AWS variables point this process and its children at it."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    variables = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_REGION": "us-east-1",
    }
    saved = {name: os.environ.get(name) for name in [*variables, "AWS_SESSION_TOKEN", "AWS_PROFILE"]}
    os.environ.update(variables)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    try:
        yield endpoint
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


def _new_bucket(endpoint: str, name: str) -> str:
    import boto3

    bucket = f"{name}-{uuid.uuid4().hex[:8]}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/lake"


def fan_out(work: Path, partitions: int = FAN_OUT_PARTITIONS, rows: int = ROWS_PER_DAY) -> dict[str, Any]:
    """The same `partitions` dates processed by one process per date at once, and by one process serially,
    each on a new bucket whose lake already holds one earlier date built through silver."""
    from dagster_project.defs.transform.assets import SILVER, DbtStep

    select = DbtStep(SILVER, partitioned=True).select
    folder = work / "fan_out"
    shutil.rmtree(folder, ignore_errors=True)
    first = LAST_DAY - dt.timedelta(days=partitions)
    dates = [first + dt.timedelta(days=n) for n in range(partitions + 1)]
    files = [partner_file(folder / "files", n, day, rows) for n, day in enumerate(dates)]
    ctx = multiprocessing.get_context("spawn")
    results: dict[str, Any] = {"partitions": partitions, "rows_per_partition": rows, "dbt_select": select}
    with s3_server() as endpoint:
        for mode in ("serial", "parallel"):
            lake_root = _new_bucket(endpoint, mode)

            def job(csv: Path, n: int, root: str = lake_root, kind: str = mode) -> PartitionJob:
                return PartitionJob(root, str(csv), str(folder / kind / f"p{n}"), select, f"bench-{kind}-{n}")

            # The lake as a day of production finds it: tables exist, one earlier date is built.
            setup = _run_processes(ctx, [[job(files[0], 0)]])
            if not all(r["ok"] for r in setup):
                raise RuntimeError(f"fan-out setup failed: {setup}")
            versions_before = _versions(lake_root)
            jobs = [job(csv, n) for n, csv in enumerate(files[1:], start=1)]
            start = time.perf_counter()
            runs = _run_processes(ctx, [[j] for j in jobs] if mode == "parallel" else [jobs])
            seconds = time.perf_counter() - start
            results[mode] = {
                "seconds": seconds,
                "runs": runs,
                "versions_before": versions_before,
                "versions_after": _versions(lake_root),
                **_verify(lake_root, [d.isoformat() for d in dates[1:]], rows, runs),
            }
    return results


def _run_processes(ctx: Any, groups: list[list[PartitionJob]]) -> list[dict[str, Any]]:
    """One process per group of jobs (run in order within the group), all started at once."""
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(g[0], queue))
        if len(g) == 1
        else ctx.Process(target=_serial_worker, args=(g, queue))
        for g in groups
    ]
    for p in procs:
        p.start()
    expected = sum(len(g) for g in groups)
    runs = []
    while len(runs) < expected:
        try:
            runs.append(queue.get(timeout=5))
        except Exception:  # queue.Empty: a worker that died without reporting leaves its runs missing
            if not any(p.is_alive() for p in procs) and queue.empty():
                break
    for p in procs:
        p.join()
    reported = {r["run_id"] for r in runs}
    for g in groups:
        for j in g:
            if j.run_id not in reported:
                runs.append({"run_id": j.run_id, "ok": False, "error": "the worker process died without a result"})
    return runs


def _versions(lake_root: str) -> dict[str, int]:
    from deltalake import DeltaTable

    lake = Lake.parse(lake_root, settings.lake_storage_options())
    tables = [
        ("bronze", "customers"),
        ("quarantine", "customers"),
        ("silver", "stg_acme__customer_versions"),
        ("silver", "stg_acme__customers"),
    ]
    return {
        f"{layer}.{name}": DeltaTable(lake.table(layer, name), storage_options=lake.delta_options()).version()
        for layer, name in tables
    }


def _verify(lake_root: str, dates: list[str], rows: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows in = rows out, per layer, and every load a run reported is the partition's load in the lake."""
    from dagster_project.lib.bronze.engine import find_load_commit, partition_state
    from dagster_project.lib.sources.registry import CUSTOMERS

    lake = Lake.parse(lake_root, settings.lake_storage_options())
    lost = []
    for r in runs:
        if "load" not in r:
            continue
        day = dt.date.fromisoformat(r["business_date"])
        state = partition_state(CUSTOMERS, lake, day)
        commit = find_load_commit(CUSTOMERS, lake, "bronze", day, r["load"])
        if state.bronze_load != r["load"] or state.quarantine_load != r["load"] or commit is None:
            lost.append(f"{r['business_date']}: load {r['load']} of {r['run_id']} is not the partition's")
        elif commit.run_id != r["run_id"]:
            lost.append(f"{r['business_date']}: load {r['load']} was committed by {commit.run_id}, not {r['run_id']}")
    with lake.connect() as con:
        con.execute("set TimeZone = 'UTC'")
        con.execute("set enable_progress_bar = false")
        lake.attach(con)
        days = ", ".join(f"date '{d}'" for d in dates)  # our own ISO dates
        (bronze,) = con.execute(f"select count(*) from bronze.customers where business_date in ({days})").fetchone()
        (quarantine,) = con.execute(
            f"select count(*) from quarantine.customers where business_date in ({days})"
        ).fetchone()
        # Silver against bronze: one version per customer and date, and each customer's latest record.
        (versions_missing,) = con.execute(
            """
            select count(*) from (
                select distinct customer_id, business_date from bronze.customers
                except
                select customer_id, business_date from silver.stg_acme__customer_versions
            )"""
        ).fetchone()
        (versions_extra,) = con.execute(
            """
            select count(*) from (
                select customer_id, business_date from silver.stg_acme__customer_versions
                except
                select distinct customer_id, business_date from bronze.customers
            )"""
        ).fetchone()
        (customers_wrong,) = con.execute(
            """
            with latest as (
                select customer_id, max(updated_at) as updated_at from bronze.customers group by customer_id
            )
            select count(*) from latest
            full join silver.stg_acme__customers as s using (customer_id)
            where s.customer_id is null or latest.customer_id is null or s.updated_at <> latest.updated_at
            """
        ).fetchone()
    return {
        "rows_in": rows * len(dates),
        "bronze_rows": bronze,
        "quarantine_rows": quarantine,
        "lost_loads": lost,
        "silver_versions_missing": versions_missing,
        "silver_versions_extra": versions_extra,
        "silver_customers_wrong": customers_wrong,
    }


# -- 3. memory ------------------------------------------------------------------------------------------


def memory(work: Path, sizes: Sequence[int] = MEMORY_SIZES, *, pod_limit: str | None = None) -> list[dict[str, Any]]:
    """Peak RSS of a bronze hop (land + load of one partner file) and of the customers slice's dbt build of
    that partition, each in its own process, for one partition of each size; with `pod_limit` (a DuckDB
    memory_limit) the dbt build again under that limit."""
    results = []
    window = (LAST_DAY.isoformat(), LAST_DAY.isoformat())
    build = ["build", "--select", *CUSTOMERS_SLICE]
    for rows in sizes:
        folder = (work / "memory" / str(rows)).resolve()
        shutil.rmtree(folder, ignore_errors=True)
        csv = partner_file(folder / "files", 0, LAST_DAY, rows)
        lake_root = str(folder / "lake")
        hop = _checked(
            measure(
                [sys.executable, "-m", "benchmarks.lakehouse", "--hop", lake_root, str(csv)],
                env=os.environ,
                cwd=Path.cwd(),
                log=folder / "hop.out",
            ),
            f"bronze hop of {rows:,} rows",
        )
        run = dbt(build, lake_root=lake_root, target=folder / "t", window=window)
        run = _checked(run, f"dbt build of {rows:,} rows")
        result = {
            "rows": rows,
            "file_mb": csv.stat().st_size / 1e6,
            "hop_seconds": hop.seconds,
            "hop_peak_rss_mib": hop.peak_rss_mib,
            "dbt_seconds": run.seconds,
            "dbt_peak_rss_mib": run.peak_rss_mib,
        }
        if pod_limit:
            # The same build from scratch: the first one created every table, this one must too.
            shutil.rmtree(Path(lake_root) / "silver", ignore_errors=True)
            shutil.rmtree(Path(lake_root) / "gold", ignore_errors=True)
            result["pod"] = _pod_result(
                dbt(build, lake_root=lake_root, target=folder / "pod", window=window, memory_limit=pod_limit)
            )
        results.append(result)
        shutil.rmtree(folder, ignore_errors=True)
    return results


def _hop(lake_root: str, csv: str) -> None:
    """A bronze hop as a run pod does it: land the partner file in the lake, load its partition."""
    job = PartitionJob(lake_root, csv, str(Path(csv).parent / "scratch"), "", "bench-memory")
    result = process_partition(job, silver=False)
    if not result["ok"]:
        raise SystemExit(f"bronze hop failed: {result.get('error')}")
    print(json.dumps(result))


# -- the `make bench` section ---------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


def _model_reads(target: Path) -> dict[str, str]:
    """What each model of the last build reads, from its materialization in dbt's manifest."""
    manifest = json.loads((target / "manifest.json").read_text())
    reads = {}
    for node in manifest["nodes"].values():
        if node["resource_type"] != "model":
            continue
        config = node["config"]
        if config.get("materialized") != "incremental":
            reads[node["name"]] = "table: rebuilt from all of its inputs"
        elif config.get("partition_by") and config.get("partition_by") == config.get("unique_key"):
            reads[node["name"]] = "incremental: the window's partitions only"
        else:
            reads[node["name"]] = f"incremental, merge on {config.get('unique_key')}: the keys the window changed"
    return reads


def _pod_columns(pod: dict[str, Any] | None, limit: tuple[str, int] | None) -> str:
    if pod is None or limit is None:
        return ""
    fits = pod["ok"] and pod["peak_rss_mib"] * 2**20 <= limit[1]
    return f" {pod['seconds']:>7.1f} {pod['peak_rss_mib']:>11.0f} {'yes' if fits else 'NO':>4}"


def _pod_header(limit: tuple[str, int] | None) -> str:
    return "" if limit is None else f" {'pod s':>7} {'pod RSS MiB':>11} {'fits':>4}"


def _pod_footer(results: list[dict[str, Any]], limit: tuple[str, int] | None) -> None:
    note = _pod_note(limit)
    if note is None:
        return
    print(f"{note}; fits: it succeeded and its peak RSS stayed within {limit[0]}")
    for r in results:
        if r.get("pod") and not r["pod"]["ok"]:
            print(f"  pod build failed: {r['pod']['error']}")


def print_pruning(results: list[dict[str, Any]], work: Path, pod: tuple[str, int] | None = None) -> None:
    base = results[0]
    print(
        f"{'history':>8} {'one-day build s':>15} {'vs 1 day':>8} {'CPU s':>6} {'vs 1 day':>8} {'peak RSS MiB':>12} "
        f"{'silver versions':>15} {'history build s':>15}" + _pod_header(pod)
    )
    for r in results:
        print(
            f"{r['days']:>6} d {r['seconds']:>15.1f} {r['seconds'] / base['seconds']:>8.2f} "
            f"{r['cpu_seconds']:>6.1f} {r['cpu_seconds'] / base['cpu_seconds']:>8.2f} {r['peak_rss_mib']:>12.0f} "
            f"{r['silver_versions_rows']:>15,} {r['history_seconds']:>15.1f}" + _pod_columns(r.get("pod"), pod)
        )
    _pod_footer(results, pod)
    print(
        f"baseline: the build with {base['days']} day of history, in this run; before this work: "
        f"{RATIO_30D_BEFORE:.2f}x at 30 days (issue #10, every run copied all of bronze into DuckDB)"
    )
    print("seconds per model in the one-day build (run_results.json; dbt runs up to 4 models at once):")
    models = [m for m in results[-1]["timings"] if m != "tests"] + ["tests"]
    reads = _model_reads((work / "pruning" / "target").resolve())
    print(f"  {'model':<28}" + "".join(f"{str(r['days']) + ' d':>8}" for r in results) + "  reads")
    for m in models:
        row = "".join(f"{r['timings'].get(m, 0.0):>8.2f}" for r in results)
        print(f"  {m:<28}{row}  {reads.get(m, 'every data test of the slice')}")
    growth = sorted(
        results[-1]["test_timings"],
        key=lambda t: results[-1]["test_timings"][t] - base["test_timings"].get(t, 0.0),
        reverse=True,
    )[:TESTS_SHOWN]
    print(f"the {TESTS_SHOWN} data tests whose seconds grow most with history:")
    for t in growth:
        row = "".join(f"{r['test_timings'].get(t, 0.0):>8.2f}" for r in results)
        print(f"  {t[:60]:<60}{row}")
    print(f"target: one-day build with 30 and 90 days of history <= {RATIO_TARGET}x the 1-day figure")
    for r in results[1:]:
        ratio = r["seconds"] / base["seconds"]
        cpu = r["cpu_seconds"] / base["cpu_seconds"]
        print(f"  {r['days']} days: {_verdict(ratio <= RATIO_TARGET)} ({ratio:.2f}x; CPU time {cpu:.2f}x)")


def print_fan_out(result: dict[str, Any]) -> None:
    print(
        f"each process lands its date's partner file ({result['rows_per_partition']:,} rows), loads bronze through "
        f"the engine, then runs the dbt_silver_daily step for its date (`dbt build --select {result['dbt_select']}`), "
        "run again after a lost commit race like the Dagster step"
    )
    print(
        f"{'mode':>9} {'processes':>9} {'wall s':>7} {'rows in':>9} {'bronze+quar.':>12} {'failed runs':>11} "
        f"{'lost commits':>12} {'bronze retries':>14} {'dbt retries':>11} {'silver wrong':>12}"
    )
    for mode in ("serial", "parallel"):
        r = result[mode]
        failed = sum(not run["ok"] for run in r["runs"])
        retries_bronze = sum(run.get("bronze_conflicts", 0) for run in r["runs"])
        retries_dbt = sum(max(run.get("dbt_attempts", 1) - 1, 0) for run in r["runs"])
        silver_wrong = r["silver_versions_missing"] + r["silver_versions_extra"] + r["silver_customers_wrong"]
        processes = result["partitions"] if mode == "parallel" else 1
        print(
            f"{mode:>9} {processes:>9} {r['seconds']:>7.1f} {r['rows_in']:>9,} "
            f"{r['bronze_rows'] + r['quarantine_rows']:>12,} {failed:>11} {len(r['lost_loads']):>12} "
            f"{retries_bronze:>14} {retries_dbt:>11} {silver_wrong:>12}"
        )
        for run in r["runs"]:
            for error in run.get("dbt_errors", []):
                print(f"  {mode} {run['business_date']}: dbt attempt lost: {error}")
            if not run["ok"]:
                print(f"  {mode} {run.get('business_date', run['run_id'])}: FAILED: {run.get('error')}")
        for line in r["lost_loads"]:
            print(f"  {mode}: lost: {line}")
        versions = ", ".join(f"{t} {r['versions_before'][t]} -> {v}" for t, v in r["versions_after"].items())
        print(f"  {mode} Delta versions (before -> after): {versions}")
    par, ser = result["parallel"], result["serial"]
    print(
        f"parallel wall time: {par['seconds'] / ser['seconds']:.2f}x the serial one (baseline, this run) on "
        f"{os.cpu_count()} cores shared with other work (load average {result['load_average'][0]:.1f} before, "
        f"{result['load_average'][1]:.1f} after)"
    )
    ok = all(
        r["bronze_rows"] + r["quarantine_rows"] == r["rows_in"]
        and not r["lost_loads"]
        and all(run["ok"] for run in r["runs"])
        and r["silver_versions_missing"] + r["silver_versions_extra"] + r["silver_customers_wrong"] == 0
        for r in (par, ser)
    )
    print(f"target: rows in = rows out, no failed run, no lost commit, silver = bronze: {_verdict(ok)}")


def print_memory(results: list[dict[str, Any]], pod: tuple[str, int] | None = None) -> None:
    print(
        f"{'rows':>11} {'file MB':>8} {'hop s':>7} {'hop RSS MiB':>11} {'dbt s':>7} {'dbt RSS MiB':>11}"
        + _pod_header(pod)
    )
    for r in results:
        print(
            f"{r['rows']:>11,} {r['file_mb']:>8.0f} {r['hop_seconds']:>7.1f} {r['hop_peak_rss_mib']:>11.0f} "
            f"{r['dbt_seconds']:>7.1f} {r['dbt_peak_rss_mib']:>11.0f}" + _pod_columns(r.get("pod"), pod)
        )
    print("hop: land one partner file and load its partition; dbt: the customers slice's build of that one partition")
    _pod_footer(results, pod)


PARTS = ("pruning", "fan_out", "memory")


def section(work: Path, *, quick: bool = False, large: bool = False, parts: Sequence[str] = PARTS) -> None:
    """Run and print the parts (`make bench`'s lakehouse section).

    By default: 1 and 30 days of history, 8 dates of 100,000 rows, one 1M-row partition. --large adds the
    90-day history and a 10M-row partition, and runs each dbt build again with DuckDB limited as in a run pod
    of the Helm chart; --quick uses 10,000 rows a day."""
    work = work / "lakehouse"
    rows = 10_000 if quick else ROWS_PER_DAY
    pod = run_pod_memory() if large else None
    if "pruning" in parts:
        _pruning_section(work, HISTORIES if large else HISTORIES[:2], rows, pod)
    if "fan_out" in parts:
        _fan_out_section(work, rows)
    if "memory" in parts:
        _memory_section(work, LARGE_MEMORY_SIZES if large else MEMORY_SIZES, pod)


def _load() -> str:
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def _pod_note(pod: tuple[str, int] | None) -> str | None:
    if pod is None:
        return None
    return f"pod: the same build with DuckDB's memory_limit = {pod_duckdb_limit(pod[1])}, 80% of the run pods' {pod[0]}"


def _pruning_section(work: Path, histories: Sequence[int], rows: int, pod: tuple[str, int] | None) -> None:
    print(
        f"\n## Reads pruned to the partition window: one-day build of the customers slice, {rows:,} bronze rows a "
        f"day, {', '.join(str(d) for d in histories)} days of history built"
        + ("" if 90 in histories else " (90 days: --large)")
    )
    before = _load()
    results = pruning(work, histories, rows, pod_limit=pod_duckdb_limit(pod[1]) if pod else None)
    print(f"({before} before, {_load()} after)")
    print_pruning(results, work, pod)


def _fan_out_section(work: Path, rows: int) -> None:
    print(f"\n## Fan-out: {FAN_OUT_PARTITIONS} business dates on an s3:// lake (moto on loopback), a process each")
    load_before = os.getloadavg()[0]
    result = fan_out(work, FAN_OUT_PARTITIONS, rows)
    result["load_average"] = (load_before, os.getloadavg()[0])
    print_fan_out(result)


def _memory_section(work: Path, sizes: Sequence[int], pod: tuple[str, int] | None) -> None:
    print(
        "\n## Peak memory of one partition's work, each in its own process"
        + ("" if max(sizes) >= 10_000_000 else " (10M rows: --large)")
    )
    before = _load()
    results = memory(work, sizes, pod_limit=pod_duckdb_limit(pod[1]) if pod else None)
    print(f"({before} before, {_load()} after)")
    print_memory(results, pod)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--hop"]:
        _hop(sys.argv[2], sys.argv[3])
    else:
        import argparse

        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--quick", action="store_true", help="10,000 rows a business date")
        parser.add_argument("--large", action="store_true", help="90 days of history, 10M rows, DuckDB as in a pod")
        parser.add_argument("--only", choices=("pruning", "fan_out", "memory"))
        args = parser.parse_args()
        section(Path(".bench"), quick=args.quick, large=args.large, parts=[args.only] if args.only else PARTS)
