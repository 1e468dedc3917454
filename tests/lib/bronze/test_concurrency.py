"""Concurrent loads lose nothing: loads of one partition that read different landing states, loads of many
partitions at once, and a load killed between its quarantine and bronze commits, on a local lake and on the
loopback S3 server. Loads run in separate processes (spawned: a fork after deltalake's runtime started
deadlocks), and the test moves them along by waiting on what they report, never on time."""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import queue
import signal
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from dagster_project import settings
from dagster_project.lib.bronze.engine import (
    ConcurrentLoadError,
    LoadEvent,
    LoadResult,
    PartitionState,
    RetryPolicy,
    find_load_commit,
    load_partition,
    partition_state,
)
from dagster_project.lib.bronze.readers.partner_files import PartnerFilesReader
from dagster_project.lib.checksums import crc32_hex
from dagster_project.lib.intake.landing import land_file, landed_files
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.naming import parse_file_name
from dagster_project.lib.sources.registry import CUSTOMERS
from tests.lakes import LOCAL_AND_S3
from tests.lib.customer_files import RECEIVED_AT, customer, customers_csv

SPAWN = mp.get_context("spawn")
DAY = "2025-11-05"
# A safety net for a child that died without a word; the tests wait for conditions, not for this long.
STUCK_SECONDS = 300
FAST_RETRY = RetryPolicy(first_delay=0.01, max_delay=0.05)


# --- helpers that run in the child processes (module level, so a spawned child can import them) -------------


def open_reader(lake: Lake, day: str) -> AbstractContextManager[PartnerFilesReader]:
    """A reader over what has landed for `day` by now, as the SFTP assets open it."""
    return nullcontext(PartnerFilesReader(CUSTOMERS, landed_files(lake, "customers", day), day, lake=lake))


def load_in_child(
    root: str, options: dict[str, str], day: str, run_id: str, messages: Any, pause: str, go: Any, start: Any
) -> None:
    """Load one partition and report each step; at the step named `pause` (`reading`, `committed:quarantine`)
    block until the parent sets `go` (or kills this process). `start`, when given, is a barrier to pass first.
    `pause="one-cpu"` runs the load on one CPU instead, as in a pod with a one-CPU limit."""
    lake = Lake.parse(root, options)
    paused = False

    def on_event(event: LoadEvent) -> None:
        nonlocal paused
        step = f"{event.kind}:{event.table}" if event.table else event.kind
        messages.put(("event", run_id, step, event.attempt))
        if step == pause and not paused:
            paused = True
            messages.put(("paused", run_id, step, event.attempt))
            go.wait()

    if pause == "one-cpu":
        # Before deltalake starts its runtime, which sizes its thread pool by the CPUs this process may use.
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    try:
        if start is not None:
            start.wait()
        result = load_partition(
            CUSTOMERS,
            lambda: open_reader(lake, day),
            lake=lake,
            run_id=run_id,
            business_date=day,
            retry=FAST_RETRY,
            on_event=on_event,
        )
    except BaseException as exc:
        messages.put(("error", run_id, f"{type(exc).__name__}: {exc}", 0))
        raise
    messages.put(("done", run_id, _summary(result), result.attempts))


def _summary(result: LoadResult) -> dict[str, Any]:
    return {
        "load": result.load,
        "attempts": result.attempts,
        "received": result.received,
        "loaded": result.loaded,
        "quarantined": result.quarantined,
        "repaired": result.repaired.describe() if result.repaired else None,
    }


# --- fixtures and parent-side helpers ------------------------------------------------------------------------


@pytest.fixture(params=LOCAL_AND_S3)
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    if request.param == "local":
        return Lake.parse(str(tmp_path / "lake"))
    return Lake.parse(request.getfixturevalue("s3_lake"), settings.lake_storage_options())


class Children:
    """Child processes loading partitions, and the messages they send; every child is gone after the test."""

    def __init__(self, lake: Lake):
        self.lake = lake
        self.messages = SPAWN.Queue()
        self.processes: dict[str, SpawnProcess] = {}
        self.gates: dict[str, Any] = {}
        self.seen: list[tuple] = []

    def start(self, run_id: str, day: str = DAY, *, pause: str = "", start: Any = None) -> SpawnProcess:
        go = SPAWN.Event()
        process = SPAWN.Process(
            target=load_in_child,
            args=(self.lake.root, dict(self.lake.storage_options), day, run_id, self.messages, pause, go, start),
            name=f"load-{run_id}",
        )
        process.start()
        self.processes[run_id], self.gates[run_id] = process, go
        return process

    def expect(self, kind: str, run_id: str) -> tuple:
        """The next message of `kind` from `run_id`; fails at once if that child reports an error."""
        for earlier in self.seen:
            if earlier[:2] == (kind, run_id):
                self.seen.remove(earlier)
                return earlier
        while True:
            try:
                message = self.messages.get(timeout=STUCK_SECONDS)
            except queue.Empty:
                pytest.fail(f"no {kind!r} from {run_id} (messages so far: {self.seen})")
            if message[:2] == ("error", run_id):
                pytest.fail(f"{run_id} failed: {message[2]}")
            if message[:2] == (kind, run_id):
                return message
            self.seen.append(message)

    def resume(self, run_id: str) -> None:
        self.gates[run_id].set()

    def finish(self, run_id: str) -> dict[str, Any]:
        summary = self.expect("done", run_id)[2]
        process = self.processes[run_id]
        process.join(STUCK_SECONDS)
        assert process.exitcode == 0, f"{run_id} exited with {process.exitcode}"
        return summary

    def close(self) -> None:
        for process in self.processes.values():
            if process.is_alive():
                process.kill()
            process.join(STUCK_SECONDS)


@pytest.fixture
def children(lake: Lake) -> Iterator[Children]:
    running = Children(lake)
    yield running
    running.close()


def land(lake: Lake, tmp_path: Path, ids: range, *, bad: int, day: str = DAY, sequence: int = 1) -> None:
    """Land a customers file with the good records `ids` and `bad` records that break the contract."""
    rows = [customer(i) for i in ids] + [customer(90_000 + i, status="gone") for i in range(bad)]
    data = customers_csv(rows).encode()
    name = CUSTOMERS.files.file_name(day, sequence, crc32_hex(data))
    staged = tmp_path / "staged" / name
    staged.parent.mkdir(exist_ok=True)
    staged.write_bytes(data)
    land_file(
        lake, parse_file_name(name), staged, source="sftp", source_uri=f"sftp://x/{name}", received_at=RECEIVED_AT
    )


def rows(lake: Lake, layer: str, day: str = DAY) -> list[dict[str, Any]]:
    table = DeltaTable(lake.table(layer, "customers"), storage_options=lake.delta_options()).to_pyarrow_table()
    return [r for r in table.to_pylist() if r["business_date"] == dt.date.fromisoformat(day)]


def load_here(lake: Lake, run_id: str, day: str = DAY, **kwargs: Any) -> LoadResult:
    return load_partition(
        CUSTOMERS, lambda: open_reader(lake, day), lake=lake, run_id=run_id, business_date=day, **kwargs
    )


def assert_exactly_once(lake: Lake, good: set[int], bad: int, run_id: str, day: str = DAY) -> None:
    bronze, quarantine = rows(lake, "bronze", day), rows(lake, "quarantine", day)
    assert sorted(r["customer_id"] for r in bronze) == sorted(good)
    assert len(quarantine) == bad
    assert {r["_run_id"] for r in bronze + quarantine} == {run_id}
    assert partition_state(CUSTOMERS, lake, dt.date.fromisoformat(day)).consistent


# --- one partition, two runs, two landing states -------------------------------------------------------------


@pytest.mark.slow  # processes of their own
@pytest.mark.parametrize("pause", ["reading", "committed:quarantine"])
def test_a_load_that_read_an_older_landing_state_retries_and_every_landed_row_is_in_bronze_once(
    lake: Lake, children: Children, tmp_path: Path, pause: str
) -> None:
    """Run `stale` reads the partition while one file has landed and stops (before its first commit, or
    between its two commits); a second file lands and run `fresh` loads both; `stale` then commits against
    what it pinned, loses, reads the input again and wins with both files."""
    land(lake, tmp_path, range(1, 21), bad=1, sequence=1)
    children.start("stale", pause=pause)
    children.expect("paused", "stale")

    land(lake, tmp_path, range(21, 41), bad=2, sequence=2)
    children.start("fresh")
    fresh = children.finish("fresh")
    assert (fresh["attempts"], fresh["loaded"], fresh["quarantined"]) == (1, 40, 3)

    children.resume("stale")
    stale = children.finish("stale")
    assert stale["attempts"] == 2, "the stale commit must lose to the fresh one and be retried"
    assert (stale["received"], stale["loaded"], stale["quarantined"]) == (43, 40, 3)
    assert_exactly_once(lake, set(range(1, 41)), bad=3, run_id="stale")


# --- many partitions at once ---------------------------------------------------------------------------------


@pytest.mark.slow  # processes of their own
def test_eight_processes_load_eight_partitions_at_once_with_nothing_lost(
    lake: Lake, children: Children, tmp_path: Path
) -> None:
    days = [(dt.date(2025, 11, 1) + dt.timedelta(days=i)).isoformat() for i in range(8)]
    truth = {day: (range(100 * i + 1, 100 * i + 31 + i), i % 3) for i, day in enumerate(days)}
    for day, (ids, bad) in truth.items():
        land(lake, tmp_path, ids, bad=bad, day=day)
    received = sum(len(ids) + bad for ids, bad in truth.values())

    start = SPAWN.Barrier(len(days))  # the tables do not exist yet: the eight race to create them too
    for day in days:
        children.start(f"run-{day}", day, start=start)
    summaries = {day: children.finish(f"run-{day}") for day in days}

    assert sum(s["received"] for s in summaries.values()) == received
    loaded = sum(len(rows(lake, "bronze", day)) + len(rows(lake, "quarantine", day)) for day in days)
    assert loaded == received, "rows in = rows out"
    for day, (ids, bad) in truth.items():
        assert summaries[day]["attempts"] == 1, f"{day}: a commit of another partition cost a retry"
        assert_exactly_once(lake, set(ids), bad, run_id=f"run-{day}", day=day)
        for layer in ("bronze", "quarantine"):
            commit = find_load_commit(CUSTOMERS, lake, layer, dt.date.fromisoformat(day), summaries[day]["load"])
            assert commit is not None and commit.run_id == f"run-{day}", f"{layer} {day}: commit lost"
    for layer in ("bronze", "quarantine"):
        table = DeltaTable(lake.table(layer, "customers"), storage_options=lake.delta_options())
        assert table.version() == len(days), f"{layer}: one create and one commit per partition, none lost"


@pytest.mark.slow  # processes of their own
def test_a_load_with_quarantined_records_completes_on_one_cpu(lake: Lake, children: Children, tmp_path: Path) -> None:
    """Both commits of a load go through with one runtime thread (a pod with a one-CPU limit)."""
    land(lake, tmp_path, range(1, 51), bad=3)
    children.start("one-cpu", pause="one-cpu")
    summary = children.finish("one-cpu")
    assert (summary["loaded"], summary["quarantined"]) == (50, 3)
    assert_exactly_once(lake, set(range(1, 51)), bad=3, run_id="one-cpu")


# --- a load killed between its two commits -------------------------------------------------------------------


@pytest.mark.slow  # processes of their own
def test_a_load_killed_between_its_two_commits_is_detected_and_the_next_load_repairs_the_pair(
    lake: Lake, children: Children, tmp_path: Path
) -> None:
    day = dt.date.fromisoformat(DAY)
    land(lake, tmp_path, range(1, 11), bad=1, sequence=1)
    children.start("first")
    first = children.finish("first")
    land(lake, tmp_path, range(11, 21), bad=1, sequence=2)

    killed = children.start("killed", pause="committed:quarantine")
    children.expect("paused", "killed")
    os.kill(killed.pid, signal.SIGKILL)
    killed.join(STUCK_SECONDS)
    assert killed.exitcode == -signal.SIGKILL

    state = partition_state(CUSTOMERS, lake, day)
    assert state == PartitionState("customers", day, bronze_load=first["load"], quarantine_load=first["load"] + 1)
    assert not state.consistent
    ahead = find_load_commit(CUSTOMERS, lake, "quarantine", day, state.quarantine_load)
    assert ahead is not None and ahead.run_id == "killed"
    assert ahead.figures == {"received": 22, "loaded": 20, "quarantined": 2, "duplicates": 0, "forgotten": 0}
    # Bronze is still the first load, whole: a reader of bronze never sees half a load.
    assert sorted(r["customer_id"] for r in rows(lake, "bronze")) == list(range(1, 11))
    assert {r["_run_id"] for r in rows(lake, "bronze")} == {"first"}
    assert {r["_run_id"] for r in rows(lake, "quarantine")} == {"killed"}

    repair = load_here(lake, "repair")
    assert repair.repaired == state
    assert "quarantine holds load 2 but bronze load 1" in repair.repaired.describe()
    assert repair.load == state.quarantine_load + 1
    assert_exactly_once(lake, set(range(1, 21)), bad=2, run_id="repair")


# --- retries, in one process ---------------------------------------------------------------------------------


def test_a_commit_of_another_partition_first_costs_no_retry(tmp_path: Path) -> None:
    lake = Lake.parse(str(tmp_path / "lake"))
    land(lake, tmp_path, range(1, 6), bad=0, day="2025-11-05")
    land(lake, tmp_path, range(6, 9), bad=0, day="2025-11-06")
    other_done = False

    def opener() -> AbstractContextManager[PartnerFilesReader]:
        nonlocal other_done
        if not other_done:  # after this load pinned both tables, another partition commits to them
            other_done = True
            load_here(lake, "other", "2025-11-06")
        return open_reader(lake, "2025-11-05")

    result = load_partition(CUSTOMERS, opener, lake=lake, run_id="this", business_date="2025-11-05")
    assert result.attempts == 1
    assert sorted(r["customer_id"] for r in rows(lake, "bronze", "2025-11-05")) == [1, 2, 3, 4, 5]
    assert sorted(r["customer_id"] for r in rows(lake, "bronze", "2025-11-06")) == [6, 7, 8]


def test_a_load_that_loses_every_attempt_names_the_table_and_partition(tmp_path: Path) -> None:
    lake = Lake.parse(str(tmp_path / "lake"))
    land(lake, tmp_path, range(1, 6), bad=0)
    waits: list[float] = []
    events: list[LoadEvent] = []

    def opener() -> AbstractContextManager[PartnerFilesReader]:
        # Each attempt, after pinning, is overtaken by another load of the same partition.
        load_here(lake, f"rival-{uuid.uuid4().hex[:6]}")
        return open_reader(lake, DAY)

    policy = RetryPolicy(attempts=3, first_delay=0.5, max_delay=0.75, sleep=waits.append)
    with pytest.raises(ConcurrentLoadError) as err:
        load_partition(
            CUSTOMERS, opener, lake=lake, run_id="loser", business_date=DAY, retry=policy, on_event=events.append
        )
    assert str(err.value).startswith(
        "quarantine.customers partition 2025-11-05: all 3 attempts lost their commit to concurrent loads"
    )
    assert len(waits) == 2 and 0 <= waits[0] <= 0.5 and 0 <= waits[1] <= 0.75
    assert [e.kind for e in events if e.kind == "conflict"] == ["conflict", "conflict"]
    # What the rivals wrote stands, whole, and the pair is theirs.
    assert partition_state(CUSTOMERS, lake, dt.date.fromisoformat(DAY)).consistent
    assert sorted(r["customer_id"] for r in rows(lake, "bronze")) == [1, 2, 3, 4, 5]


def test_a_reader_that_cannot_read_again_fails_at_once_on_a_lost_commit(tmp_path: Path) -> None:
    lake = Lake.parse(str(tmp_path / "lake"))
    land(lake, tmp_path, range(1, 4), bad=0)

    class Overtaken(PartnerFilesReader):
        def read(self, batch_rows: int) -> Iterator:
            load_here(lake, "rival")  # commits after this load pinned the tables
            yield from super().read(batch_rows)

    reader = Overtaken(CUSTOMERS, landed_files(lake, "customers", DAY), DAY, lake=lake)
    with pytest.raises(ConcurrentLoadError, match="cannot read its input again; load it with a reader opener"):
        load_partition(CUSTOMERS, reader, lake=lake, run_id="once")
    assert {r["_run_id"] for r in rows(lake, "bronze")} == {"rival"}
