"""Which inbox files are complete: two looks in a row with the same size and mtime, old enough, not temporary."""

from __future__ import annotations

from dagster_project.lib.clients.sftp import RemoteFile
from dagster_project.lib.intake.sftp_inbox import InboxPlan, plan_inbox

NAME = "acme_customers_2025-11-05_seq-00001_crc32-1A2B3C4D.csv"
OTHER = "acme_customers_2025-11-05_seq-00002_crc32-0BADF00D.csv"
NOW = 1_000_000.0
STABLE = 30.0


def _plan(files: list[RemoteFile], previous: dict[str, tuple[int, int]], *, now: float = NOW) -> InboxPlan:
    return plan_inbox(files, previous, now=now, stable_seconds=STABLE)


def test_first_sighting_waits() -> None:
    f = RemoteFile(NAME, 100, int(NOW) - 3600)
    assert _plan([f], {}) == InboxPlan(ready=[], waiting={NAME: (100, int(NOW) - 3600)}, broken={})


def test_same_size_and_mtime_on_the_next_look_is_ready() -> None:
    f = RemoteFile(NAME, 100, int(NOW) - 3600)
    first = _plan([f], {})
    second = _plan([f], first.waiting, now=NOW + 10)
    assert second == InboxPlan(ready=[f], waiting={}, broken={})


def test_changed_size_waits_again() -> None:
    mtime = int(NOW) - 3600
    plan = _plan([RemoteFile(NAME, 200, mtime)], {NAME: (100, mtime)})
    assert plan.ready == []
    assert plan.waiting == {NAME: (200, mtime)}


def test_changed_mtime_waits_again() -> None:
    plan = _plan([RemoteFile(NAME, 100, int(NOW) - 100)], {NAME: (100, int(NOW) - 200)})
    assert plan.ready == []
    assert plan.waiting == {NAME: (100, int(NOW) - 100)}


def test_stable_but_too_recent_file_waits() -> None:
    mtime = int(NOW) - 29
    plan = _plan([RemoteFile(NAME, 100, mtime)], {NAME: (100, mtime)})
    assert plan.ready == []
    assert plan.waiting == {NAME: (100, mtime)}


def test_file_exactly_stable_seconds_old_is_ready() -> None:
    mtime = int(NOW - STABLE)
    f = RemoteFile(NAME, 100, mtime)
    assert _plan([f], {NAME: (100, mtime)}).ready == [f]


def test_temporary_names_are_ignored_entirely() -> None:
    files = [RemoteFile(NAME + ".part", 100, 0), RemoteFile("." + NAME, 100, 0), RemoteFile("~" + NAME, 100, 0)]
    previous = {f.name: (f.size, f.mtime) for f in files}
    assert _plan(files, previous) == InboxPlan(ready=[], waiting={}, broken={})


def test_broken_names_are_reported_with_the_rule_and_never_taken() -> None:
    bad_date = "acme_customers_2025-02-30_seq-00001_crc32-1A2B3C4D.csv"
    unknown = "acme_orders_2025-11-05_seq-00001_crc32-1A2B3C4D.csv"
    files = [RemoteFile(bad_date, 10, 0), RemoteFile(unknown, 10, 0)]
    plan = _plan(files, {f.name: (f.size, f.mtime) for f in files})
    assert plan.ready == []
    assert plan.waiting == {}
    assert plan.broken == {
        bad_date: f"{bad_date}: business date 2025-02-30 is not a calendar date",
        unknown: f"{unknown}: unknown feed; expected a name starting with one of "
        "acme_consents_*, acme_customers_*, psp_payouts_*",
    }


def test_files_are_judged_one_by_one() -> None:
    old = int(NOW) - 3600
    ready = RemoteFile(NAME, 100, old)
    growing = RemoteFile(OTHER, 50, old)
    plan = _plan([ready, growing], {NAME: (100, old), OTHER: (10, old)})
    assert plan.ready == [ready]
    assert plan.waiting == {OTHER: (50, old)}


def test_files_no_longer_listed_are_forgotten() -> None:
    f = RemoteFile(NAME, 100, int(NOW) - 3600)
    plan = _plan([f], {OTHER: (1, 1), NAME: (100, int(NOW) - 3600)})
    assert plan.ready == [f]
    assert OTHER not in plan.waiting
