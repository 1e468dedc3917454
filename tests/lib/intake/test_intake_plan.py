"""What each inbox entry becomes, decided from a listing on a controlled clock: taken once it held still for the
window, quarantined when it breaks the contract before it can be taken, reported when it is not ours, asked
for again after a failed run, and never able to stop the others."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from dagster_project.lib.clients.sftp import RemoteEntry
from dagster_project.lib.intake.sftp_inbox import Cursor, Plan, Policy, Request, RunState, plan_inbox

NAME = "acme_customers_2025-11-05_seq-00001_crc32-1A2B3C4D.csv"
OTHER = "acme_customers_2025-11-05_seq-00002_crc32-0BADF00D.csv"
T0 = 1_000_000.0
POLICY = Policy(
    stable_seconds=30.0,
    retry_attempts=3,
    retry_backoff_seconds=60.0,
    first_day=dt.date(2025, 1, 1),
    last_day=dt.date(2025, 11, 30),
)


def _file(name: str = NAME, size: int = 100, mtime: int = 500) -> RemoteEntry:
    return RemoteEntry(name, "file", size, mtime)


class Inbox:
    """Looks at a listing the way the sensor does, keeping the cursor, with runs the test decides about."""

    def __init__(self, policy: Policy = POLICY):
        self.policy = policy
        self.cursor = Cursor()
        self.runs: dict[str, RunState] = {}

    def look(self, entries: list[RemoteEntry], now: float) -> Plan:
        plan = plan_inbox(entries, self.cursor, now=now, policy=self.policy, run_state=lambda r: self.runs.get(r.key))
        self.cursor = Cursor.from_json(plan.cursor.to_json(), now=now)  # as the daemon stores it
        return plan


def test_a_file_is_taken_once_it_held_still_for_the_window_on_our_clock() -> None:
    inbox = Inbox()
    f = _file(mtime=int(T0) + 3600)  # the server's clock is an hour ahead: its mtime says nothing about age
    assert inbox.look([f], T0).requests == []
    assert inbox.look([f], T0 + 29).requests == []
    [request] = inbox.look([f], T0 + 30).requests
    assert (request.action, request.feed, request.business_date, request.attempt) == (
        "take",
        "customers",
        "2025-11-05",
        1,
    )
    assert request.key == f"take:{NAME}:100:{int(T0) + 3600}:1"


def test_a_stalled_upload_that_goes_on_starts_the_window_again() -> None:
    inbox = Inbox()
    inbox.look([_file(size=50)], T0)
    assert inbox.look([_file(size=50)], T0 + 20).waiting[NAME] == "waiting for it to hold still for 30 s"
    assert inbox.look([_file(size=100, mtime=600)], T0 + 40).requests == []  # it grew: a new first look
    assert inbox.look([_file(size=100, mtime=600)], T0 + 60).requests == []
    assert [r.size for r in inbox.look([_file(size=100, mtime=600)], T0 + 70).requests] == [100]


def test_with_no_window_a_file_is_taken_on_the_second_look_not_the_first() -> None:
    inbox = Inbox(Policy(0, 3, 60, POLICY.first_day, POLICY.last_day))
    assert inbox.look([_file()], T0).requests == []
    assert len(inbox.look([_file()], T0).requests) == 1


def test_temporary_upload_names_wait_and_are_not_reported() -> None:
    inbox = Inbox()
    plan = inbox.look([_file(NAME + ".part"), _file(NAME + ".filepart")], T0)
    assert plan.reports == [] and plan.requests == []
    assert set(plan.waiting) == {NAME + ".part", NAME + ".filepart"}


def test_what_is_not_ours_is_reported_once_and_left_alone() -> None:
    inbox = Inbox()
    entries = [
        RemoteEntry("archive-2024", "directory", 4096, 1),
        RemoteEntry("latest.csv", "symlink", 10, 1),
        _file(".bash_history"),
        _file("~" + NAME),
        _file("acme_orders_2025-11-05_seq-00001_crc32-1A2B3C4D.csv"),
        _file(),
    ]
    first = inbox.look(entries, T0)
    assert {r.name: r.reason for r in first.reports} == {
        "archive-2024": "a directory: never taken; the inbox takes files only",
        "latest.csv": "a symbolic link: never followed or taken",
        ".bash_history": "a hidden or temporary name (starting with '.' or '~'): never taken",
        "~" + NAME: "a hidden or temporary name (starting with '.' or '~'): never taken",
        "acme_orders_2025-11-05_seq-00001_crc32-1A2B3C4D.csv": (
            "acme_orders_2025-11-05_seq-00001_crc32-1A2B3C4D.csv: unknown feed; expected a name starting with one "
            "of acme_consents_*, acme_customers_*, psp_payouts_*"
        ),
    }
    later = inbox.look(entries, T0 + 60)
    assert later.reports == []  # reported once
    assert [r.name for r in later.requests] == [NAME]  # and the others keep flowing
    assert inbox.look([], T0 + 90).cursor == Cursor()  # gone from the inbox: forgotten
    assert [r.name for r in inbox.look(entries[:1], T0 + 120).reports] == ["archive-2024"]  # back: reported again


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("acme_customers_latest.csv", "does not follow the naming contract"),
        ("acme_customers_2025-02-30_seq-00001_crc32-1A2B3C4D.csv", "business date 2025-02-30 is not a calendar date"),
        (
            "acme_customers_2024-12-31_seq-00001_crc32-1A2B3C4D.csv",
            "business date 2024-12-31 is before the first partition, 2025-01-01",
        ),
        (
            "acme_customers_2999-01-01_seq-00001_crc32-1A2B3C4D.csv",
            "business date 2999-01-01 is after today's partition, 2025-11-30 (UTC); a file may be dated at most "
            "one day ahead",
        ),
        ("acme_customers_" + "x" * 230 + ".csv", "does not follow the naming contract"),
    ],
)
def test_a_file_that_cannot_be_taken_is_quarantined_by_a_run_with_the_reason(name: str, reason: str) -> None:
    inbox = Inbox()
    inbox.look([_file(name)], T0)
    [request] = inbox.look([_file(name)], T0 + 30).requests
    assert request.action == "quarantine" and request.name == name
    assert request.reason is not None and request.reason.startswith(name) and reason in request.reason


def test_a_file_dated_tomorrow_waits_for_its_partition() -> None:
    inbox = Inbox()
    tomorrow = "acme_customers_2025-12-01_seq-00001_crc32-1A2B3C4D.csv"
    inbox.look([_file(tomorrow)], T0)
    plan = inbox.look([_file(tomorrow)], T0 + 30)
    assert (
        plan.requests == []
        and plan.waiting[tomorrow] == "dated 2025-12-01: taken once its partition opens (UTC midnight)"
    )


def test_a_request_is_repeated_under_the_same_key_until_its_run_starts_then_waits_for_it() -> None:
    inbox = Inbox()
    inbox.look([_file()], T0)
    [first] = inbox.look([_file()], T0 + 30).requests
    [again] = inbox.look([_file()], T0 + 60).requests  # the daemon runs one run per key
    assert again.key == first.key
    inbox.runs[first.key] = RunState(finished=False, run_id="r1")
    plan = inbox.look([_file()], T0 + 90)
    assert plan.requests == [] and plan.waiting[NAME] == "run r1 is taking it"


def test_a_failed_run_is_asked_for_again_after_a_doubling_backoff_then_the_file_is_quarantined() -> None:
    inbox = Inbox()
    inbox.look([_file()], T0)
    [request] = inbox.look([_file()], T0 + 30).requests
    keys = [request.key]
    ended = T0 + 40
    for attempt, backoff in ((2, 60), (3, 120)):
        inbox.runs[keys[-1]] = RunState(finished=True, succeeded=False, ended_at=ended, run_id=f"r{attempt - 1}")
        assert inbox.look([_file()], ended + backoff - 1).requests == []
        [retry] = inbox.look([_file()], ended + backoff).requests
        assert retry.attempt == attempt and retry.action == "take" and retry.key not in keys
        keys.append(retry.key)
        ended += backoff + 10
    inbox.runs[keys[-1]] = RunState(finished=True, succeeded=False, ended_at=ended, run_id="r3")
    [quarantine] = inbox.look([_file()], ended + 240).requests
    assert quarantine.action == "quarantine"
    assert quarantine.reason == (
        f"{NAME}: 3 intake runs did not take it (the last: run r3, failed); quarantined so that it does not stay in "
        "the inbox without a reason: send it again once the cause, in the runs' logs, is fixed"
    )
    # A quarantine run that fails is asked for again, for as long as it takes.
    inbox.runs[quarantine.key] = RunState(finished=True, succeeded=False, ended_at=ended + 250, run_id="q1")
    [again] = inbox.look([_file()], ended + 250 + 60).requests
    assert (again.action, again.attempt) == ("quarantine", 2)


def test_a_new_version_of_a_requested_file_gets_a_new_run() -> None:
    inbox = Inbox()
    inbox.look([_file()], T0)
    [first] = inbox.look([_file()], T0 + 30).requests
    inbox.runs[first.key] = RunState(finished=True, succeeded=True, ended_at=T0 + 35, run_id="r1")
    inbox.look([_file(size=200, mtime=900)], T0 + 40)
    [second] = inbox.look([_file(size=200, mtime=900)], T0 + 70).requests
    assert (second.size, second.attempt) == (200, 1) and second.key != first.key


def test_an_entry_that_cannot_be_judged_is_reported_and_the_others_go_on() -> None:
    inbox = Inbox()

    def runs(request: Request) -> RunState | None:
        if request.name == OTHER:
            raise ConnectionError("instance storage unavailable")
        return None

    entries = [_file(), _file(OTHER)]
    inbox.look(entries, T0)
    plan = plan_inbox(entries, inbox.cursor, now=T0 + 30, policy=POLICY, run_state=lambda r: None)
    assert [r.name for r in plan.requests] == [NAME, OTHER]
    inbox.cursor = plan.cursor
    plan = plan_inbox(entries, inbox.cursor, now=T0 + 60, policy=POLICY, run_state=runs)
    assert [r.name for r in plan.requests] == [NAME]
    assert [(r.name, r.reason) for r in plan.reports] == [
        (OTHER, "could not be judged (ConnectionError: instance storage unavailable); looked at again on the next tick")
    ]


def test_the_previous_sensors_cursor_is_read() -> None:
    cursor = Cursor.from_json(json.dumps({NAME: [100, 500]}), now=T0)
    assert cursor.seen == {NAME: (100, 500, T0)}
