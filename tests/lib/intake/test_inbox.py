import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dagster_project.lib.intake.inbox import (
    InboundEvent,
    Inbox,
    InboxUnavailable,
    Position,
    UnstorableEvent,
    _BatchInsert,
    migrate,
    partition_date,
    sha256_hex,
    webhook_events,
)
from tests.postgres import postgres_schema

# trust auth on loopback, as on the build machines and in CI; an unreachable server fails these tests

FIRST_BUSINESS_DATE = date(2025, 1, 1)  # the inbox's first business date in these tests


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def inbox_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database per test: a SQLite file, or a PostgreSQL schema of its own (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'webhooks' / 'inbox.sqlite'}"
        return
    with postgres_schema("test_inbox") as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A migrated PostgreSQL schema of its own, for what only PostgreSQL does (locks, concurrent writers)."""
    with postgres_schema("test_inbox") as url:
        migrate(url)
        yield url


@pytest.fixture
def inbox(inbox_url: str) -> Iterator[Inbox]:
    migrate(inbox_url)
    with Inbox(inbox_url, first_business_date=FIRST_BUSINESS_DATE) as inbox:
        yield inbox


def _event(event_id: str = "evt_1", body: bytes | None = None, created: datetime | None = None) -> InboundEvent:
    created = created or datetime(2025, 11, 5, 12, 30, tzinfo=UTC)
    return InboundEvent(
        provider="stripe",
        event_id=event_id,
        event_type="charge.succeeded",
        event_created_at=created,
        body=body if body is not None else f'{{"id":"{event_id}","type":"charge.succeeded"}}'.encode(),
        headers={"content-type": "application/json", "stripe-signature": "t=1,v1=ab"},
    )


def test_store_keeps_the_body_byte_for_byte(inbox: Inbox):
    body = '{"id": "evt_1",  "name": "Zoë", "amount":1e2}\n'.encode()
    assert inbox.store(_event(body=body)) == "stored"
    [stored] = inbox.read_since(0)
    assert stored.body == body
    assert stored.body_sha256 == sha256_hex(body)
    assert stored.text == body.decode()
    assert stored.event_date == date(2025, 11, 5)
    assert stored.event_created_at == datetime(2025, 11, 5, 12, 30, tzinfo=UTC)
    assert stored.received_at.tzinfo is not None
    assert stored.headers == {"content-type": "application/json", "stripe-signature": "t=1,v1=ab"}


def test_replayed_event_is_stored_once(inbox: Inbox):
    assert inbox.store(_event()) == "stored"
    assert inbox.store(_event()) == "duplicate"
    assert inbox.store(_event()) == "duplicate"
    assert inbox.count() == 1
    assert inbox.conflicts() == []


def test_same_id_with_a_different_body_is_a_conflict_and_the_first_body_wins(inbox: Inbox):
    first, second = b'{"id":"evt_1","amount":100}', b'{"id":"evt_1","amount":999}'
    assert inbox.store(_event(body=first)) == "stored"
    assert inbox.store(_event(body=second)) == "conflict"
    assert inbox.store(_event(body=second)) == "conflict"  # a resend of the conflict is recorded once
    [stored] = inbox.read_since(0)
    assert stored.body == first
    [conflict] = inbox.conflicts("stripe")
    assert (conflict.event_id, conflict.stored_sha256, conflict.received_sha256) == (
        "evt_1",
        sha256_hex(first),
        sha256_hex(second),
    )
    assert conflict.body == second
    assert conflict.received_at.tzinfo is not None


def test_event_ids_are_scoped_by_provider(inbox: Inbox):
    assert inbox.store(_event()) == "stored"
    other = InboundEvent("standard", "evt_1", "x", datetime(2025, 11, 5, tzinfo=UTC), b"{}")
    assert inbox.store(other) == "stored"
    assert inbox.count() == 2
    assert inbox.count("stripe") == 1


def test_read_since_pages_in_id_order(inbox: Inbox):
    for i in range(7):
        inbox.store(_event(f"evt_{i}"))
    first = inbox.read_since(0, limit=3)
    second = inbox.read_since(first[-1].id, limit=3)
    third = inbox.read_since(second[-1].id, limit=3)
    ids = [e.event_id for e in first + second + third]
    assert ids == [f"evt_{i}" for i in range(7)]
    assert inbox.read_since(third[-1].id) == []
    assert inbox.max_id() == third[-1].id


def test_read_for_dates_selects_business_dates_in_utc(inbox: Inbox):
    day = datetime(2025, 11, 5, tzinfo=UTC)
    inbox.store(_event("evt_late", created=day + timedelta(hours=23, minutes=59, seconds=59)))
    inbox.store(_event("evt_next", created=day + timedelta(days=1)))
    # 00:30 on the 6th in UTC+02:00 is still the 5th in UTC
    inbox.store(_event("evt_tz", created=datetime(2025, 11, 6, 0, 30, tzinfo=timezone(timedelta(hours=2)))))
    assert {e.event_id for e in inbox.read_for_dates("stripe", [date(2025, 11, 5)])} == {"evt_late", "evt_tz"}
    assert [e.event_id for e in inbox.read_for_dates("stripe", [date(2025, 11, 6)])] == ["evt_next"]
    assert inbox.read_for_dates("stripe", []) == []
    assert inbox.read_for_dates("standard", [date(2025, 11, 5)]) == []
    assert inbox.event_dates("stripe") == [date(2025, 11, 5), date(2025, 11, 6)]
    batches = list(inbox.iter_for_dates("stripe", [date(2025, 11, 5), date(2025, 11, 6)], batch_size=2))
    assert [len(b) for b in batches] == [2, 1]


def test_migrate_is_idempotent(inbox_url: str):
    migrate(inbox_url)
    migrate(inbox_url)
    with Inbox(inbox_url) as inbox:
        inbox.ping()
        assert inbox.count() == 0


def test_concurrent_writers_store_each_event_once(inbox_url: str):
    # 8 threads deliver the same 50 events: every store succeeds, each event lands once. SQLite writers take
    # turns: on a loaded machine a turn can come later than the default lock timeout, which this is not about.
    migrate(inbox_url)
    inbox = Inbox(inbox_url, lock_timeout_seconds=120)
    errors: list[BaseException] = []
    outcomes: list[str] = []
    lock = threading.Lock()

    def deliver() -> None:
        try:
            for i in range(50):
                outcome = inbox.store(_event(f"evt_{i}"))
                with lock:
                    outcomes.append(outcome)
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert outcomes.count("stored") == 50
    assert outcomes.count("duplicate") == 350
    events = inbox.read_since(0, limit=1000)
    inbox.dispose()
    assert sorted(e.event_id for e in events) == sorted(f"evt_{i}" for i in range(50))


def test_unwritable_sqlite_path_raises_inbox_unavailable(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with Inbox(f"sqlite:///{blocker / 'inbox.sqlite'}") as inbox:
        with pytest.raises(InboxUnavailable):
            inbox.store(_event())
        with pytest.raises(InboxUnavailable):
            inbox.ping()


def test_dropped_table_raises_inbox_unavailable_without_values(inbox: Inbox):
    with inbox.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE webhook_events")
    secret_body = b'{"id":"evt_1","card":"4242424242424242"}'
    with pytest.raises(InboxUnavailable) as excinfo:
        inbox.store(_event(body=secret_body))
    assert "4242" not in str(excinfo.value)
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__
    with pytest.raises(InboxUnavailable):
        inbox.ping()


def test_unreachable_postgres_raises_inbox_unavailable():
    with Inbox("postgresql+psycopg2://postgres@127.0.0.1:1/test?connect_timeout=2") as inbox:
        with pytest.raises(InboxUnavailable):
            inbox.store(_event())


def test_repr_never_shows_the_body():
    assert "4242" not in repr(_event(body=b'{"card":"4242424242424242"}'))


def test_store_many_commits_a_batch_with_outcomes_in_order(inbox: Inbox):
    inbox.store(_event("evt_0"))
    batch = [
        _event("evt_1"),
        _event("evt_0"),
        _event("evt_1"),
        _event("evt_0", body=b'{"changed":true}'),
        _event("evt_2"),
    ]
    assert inbox.store_many(batch) == ["stored", "duplicate", "duplicate", "conflict", "stored"]
    assert [e.event_id for e in inbox.read_since(0)] == ["evt_0", "evt_1", "evt_2"]
    assert inbox.store_many([]) == []


def test_a_batch_stores_exactly_what_a_single_sqlalchemy_insert_stores(inbox: Inbox):
    # the batch insert is driver SQL with its own value conversions; an event stored through SQLAlchemy's
    # insert (`_store_one`) must give the very same column values
    created = datetime(2025, 11, 5, 12, 30, tzinfo=timezone(timedelta(hours=2)))  # no microseconds
    received = datetime(2025, 11, 6, 0, 0, 0, 123, tzinfo=UTC)
    headers = {"content-type": "application/json", "user-agent": 'Zoë "quoted" \\ agent'}
    one, many = (
        InboundEvent("stripe", event_id, "charge.succeeded", created, b"\x00{}\xff", headers, received)
        for event_id in ("evt_one", "evt_many")
    )
    with inbox._writer.begin() as conn:
        assert inbox._store_one(conn, one) == "stored"
    assert inbox.store_many([many]) == ["stored"]
    columns = ", ".join(c for c in _RAW_COLUMNS)
    with inbox.engine.connect() as conn:
        rows = conn.exec_driver_sql(f"SELECT {columns} FROM webhook_events ORDER BY event_id DESC").all()
    assert [bytes(v) if isinstance(v, memoryview) else v for v in rows[0]] == [
        bytes(v) if isinstance(v, memoryview) else v for v in rows[1]
    ]


# every column but the id and event id, as the database returns it (text, not what SQLAlchemy makes of it)
_RAW_COLUMNS = (
    "provider",
    "event_type",
    "CAST(event_created_at AS TEXT)",
    "CAST(event_date AS TEXT)",
    "body",
    "body_sha256",
    "CAST(headers AS TEXT)",
    "CAST(received_at AS TEXT)",
    "commit_xid > 0",
)


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.psycopg2.dialect()], ids=["sqlite", "postgres"])
def test_the_batch_inserts_value_conversions_give_sqlalchemys_output(dialect: sa.Dialect):
    fast = _BatchInsert(dialect).processors
    samples = {
        "event_created_at": [
            datetime(2025, 11, 5, 12, 30, tzinfo=UTC),
            datetime(2025, 11, 5, 12, 30, 1, 7, tzinfo=UTC),
            datetime(1, 1, 1, tzinfo=UTC),
            datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        ],
        "event_date": [date(2025, 11, 5), date(1, 1, 1), date(9999, 12, 31)],
        "headers": [{}, {"content-type": "application/json", "user-agent": 'Zoë "x" \\ \u2028'}],
    }
    samples["received_at"] = samples["event_created_at"]
    for name, values in samples.items():
        sqlalchemy_conversion = webhook_events.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        for value in values:
            expected = sqlalchemy_conversion(value) if sqlalchemy_conversion else value
            assert fast[name](value) == expected, (name, value)


# --- one event never fails the others; a lock held elsewhere is a quick error, not a hang ------------------


def _unstorable_event(inbox_url: str) -> InboundEvent:
    # PostgreSQL text cannot hold NUL; neither backend can encode a lone surrogate
    bad_id = "evt_\x00nul" if inbox_url.startswith("postgresql") else "evt_\ud800"
    return _event(bad_id, body=b'{"id":"evt_bad"}')


def test_an_unstorable_event_gets_its_own_outcome_and_the_rest_of_the_batch_is_committed(inbox: Inbox, inbox_url: str):
    batch = [_event("evt_1"), _unstorable_event(inbox_url), _event("evt_2"), _unstorable_event(inbox_url)]
    outcomes = inbox.store_many(batch)
    assert outcomes[0] == outcomes[2] == "stored"
    assert all(isinstance(o, UnstorableEvent) for o in (outcomes[1], outcomes[3]))
    assert "nul" not in str(outcomes[1]) and "\ud800" not in str(outcomes[1])
    assert sorted(e.event_id for e in inbox.read_since(0)) == ["evt_1", "evt_2"]
    with pytest.raises(UnstorableEvent):
        inbox.store(_unstorable_event(inbox_url))


@contextmanager
def _lock_held_elsewhere(inbox_url: str, sql: str) -> Iterator[threading.Event]:
    """Another session holds `sql`'s lock until the block ends (or a watchdog, so a regression cannot hang
    the suite); yields an event that is set once the lock was released."""
    other = Inbox(inbox_url)
    conn = other.engine.connect()
    trans = conn.begin()
    conn.exec_driver_sql(sql)
    released = threading.Event()
    watchdog = threading.Timer(120, released.set)
    watchdog.start()
    try:
        yield released
    finally:
        watchdog.cancel()
        released.set()
        trans.rollback()
        conn.close()
        other.dispose()


@pytest.mark.postgres
def test_a_table_lock_held_elsewhere_fails_writes_and_readiness_while_it_is_still_held(postgres_url: str):
    with Inbox(postgres_url, lock_timeout_seconds=0.5) as inbox:
        with _lock_held_elsewhere(postgres_url, "LOCK TABLE webhook_events IN ACCESS EXCLUSIVE MODE") as released:
            with pytest.raises(InboxUnavailable, match="LockNotAvailable"):
                inbox.store(_event())
            assert not released.is_set()  # the error came while the lock was held, not after it went
            with pytest.raises(InboxUnavailable):
                inbox.check_writable(timeout_seconds=0.5)
            assert not released.is_set()
        assert inbox.store(_event()) == "stored"
        inbox.check_writable()


def test_a_write_lock_held_elsewhere_fails_sqlite_writes_and_readiness_while_it_is_still_held(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'inbox.sqlite'}"
    migrate(url)
    with Inbox(url, lock_timeout_seconds=0.2) as inbox:
        other = Inbox(url)
        with other._writer.begin() as conn:  # BEGIN IMMEDIATE: the write lock, held until the block ends
            conn.exec_driver_sql("SELECT 1")
            with pytest.raises(InboxUnavailable, match="OperationalError"):
                inbox.store(_event())
            with pytest.raises(InboxUnavailable):
                inbox.check_writable(timeout_seconds=0.2)
        other.dispose()
        assert inbox.store(_event()) == "stored"


# --- readiness proves writes, not reads -------------------------------------------------------------------


def test_readiness_fails_on_a_database_that_reads_but_refuses_writes(inbox: Inbox, inbox_url: str):
    inbox.check_writable()

    @sa.event.listens_for(inbox.engine, "connect")
    def _read_only(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        if inbox_url.startswith("sqlite"):
            cursor.execute("PRAGMA query_only = ON")  # what a read-only file or mount gives a connection
        else:
            cursor.execute("SET default_transaction_read_only = on")  # a standby, or a read-only role
            dbapi_connection.commit()
        cursor.close()

    inbox.engine.dispose()
    inbox.ping()  # reading still works: a read-only probe would call this inbox ready
    with pytest.raises(InboxUnavailable):
        inbox.check_writable()
    with pytest.raises(InboxUnavailable):
        inbox.store(_event())


def test_readiness_fails_when_the_sqlite_file_system_is_nearly_full(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'inbox.sqlite'}"
    migrate(url)
    stats = os.statvfs(tmp_path)
    free = stats.f_bavail * stats.f_frsize
    with Inbox(url, min_free_bytes=free // 2) as inbox:
        inbox.check_writable()
    with Inbox(url, min_free_bytes=free * 2) as inbox:
        with pytest.raises(InboxUnavailable, match="file system full"):
            inbox.check_writable()


# --- every stored event has a partition -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("created", "partition"),
    [
        (datetime(2025, 11, 5, 12, tzinfo=UTC), date(2025, 11, 5)),
        (datetime(2025, 1, 1, tzinfo=UTC), date(2025, 1, 1)),  # the first partition
        (datetime(2024, 12, 31, 23, 59, tzinfo=UTC), date(2025, 11, 20)),  # before it: the day of receipt
        (datetime(1, 1, 1, tzinfo=UTC), date(2025, 11, 20)),
        (datetime(2025, 11, 21, 0, 0, 1, tzinfo=UTC), date(2025, 11, 20)),  # after the day of receipt
        (datetime(9999, 12, 31, 23, 59, tzinfo=UTC), date(2025, 11, 20)),
    ],
)
def test_an_event_whose_date_has_no_partition_is_filed_under_the_day_it_was_received(
    inbox: Inbox, created: datetime, partition: date
):
    event = InboundEvent(
        "stripe", "evt_1", "t", created, b"{}", received_at=datetime(2025, 11, 20, 23, 59, 59, tzinfo=UTC)
    )
    assert partition_date(event.event_created_at, event.received_at, FIRST_BUSINESS_DATE) == partition
    inbox.store(event)
    [stored] = inbox.read_since(0)
    assert stored.event_date == partition
    assert stored.event_created_at == created  # the creation time itself is kept as sent
    assert stored.redated == (created.date() != partition)


# --- no table lock: writers run side by side, and a cursor still never skips a late commit ----------------


def _once_readable(inbox: Inbox, count: int, start: Position | None = None, limit: int = 1000):
    """`read_page` once `count` events are readable from `start`. On PostgreSQL a commit becomes readable when
    every transaction older than it has ended, in the whole cluster: a test running beside this one on the
    same server may hold it back for a moment."""
    deadline = time.monotonic() + 60
    while True:
        events, position = inbox.read_page(start or Position(), limit=limit)
        if len(events) >= count or time.monotonic() > deadline:
            return events, position
        time.sleep(0.05)


@pytest.mark.postgres
def test_a_batch_after_the_server_closed_the_writing_connection_is_stored_on_a_new_one(postgres_url: str):
    with Inbox(postgres_url) as inbox:
        assert inbox.store_many([_event("evt_1")]) == ["stored"]
        backend = inbox._driver.connection.info.backend_pid
        with inbox.engine.connect() as conn:  # as a server restart or an idle timeout would
            assert conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(backend)})").scalar() is True
        assert inbox.store_many([_event("evt_2"), _event("evt_1")]) == ["stored", "duplicate"]
        assert inbox._driver.connection.info.backend_pid != backend
        assert sorted(e.event_id for e in inbox.read_since(0)) == ["evt_1", "evt_2"]


@pytest.mark.postgres
def test_postgres_writers_do_not_wait_for_each_other_and_late_commits_are_read_in_commit_order(postgres_url: str):
    url = postgres_url
    with Inbox(url, lock_timeout_seconds=5) as writer, Inbox(url) as other, Inbox(url) as reader:
        with writer._writer.begin() as slow:
            writer._store_one(slow, _event("evt_slow"))  # takes the lower id, commits last
            # a second writer is not held up by the first one's open transaction (it was, under a table lock)
            assert other.store(_event("evt_fast")) == "stored"
            early, position = reader.read_page(Position())
            # evt_fast committed, but a writer older than it is still running: not yet readable
            assert early == [] and position == Position()
            # the old id cursor reads past the transaction still running, and would never come back for it
            assert [e.event_id for e in reader.read_since(0)] == ["evt_fast"]
        events, position = _once_readable(reader, 2)
        assert [e.event_id for e in events] == ["evt_slow", "evt_fast"]
        assert events[0].id < events[1].id
        assert reader.read_page(position) == ([], position)


def test_read_page_follows_commit_positions(inbox: Inbox):
    for i in range(5):
        inbox.store(_event(f"evt_{i}"))
    _once_readable(inbox, 5)
    first, position = inbox.read_page(Position(), limit=3)
    second, end = inbox.read_page(position, limit=3)
    assert [e.event_id for e in first + second] == [f"evt_{i}" for i in range(5)]
    assert inbox.read_page(end) == ([], end)
    assert Position.parse(str(end)) == end
    assert Position.parse("7") == Position(0, 7) and Position.parse(None) == Position()


def test_migrate_adds_commit_positions_to_an_inbox_created_before_them(inbox_url: str):
    migrate(inbox_url)
    with Inbox(inbox_url) as inbox:
        inbox.store(_event("evt_old"))
        with inbox.engine.begin() as conn:  # back to the schema of the first release
            for table in ("webhook_events", "webhook_conflicts"):
                conn.exec_driver_sql(f"DROP INDEX ix_{table}_commit_position")
                conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN commit_xid")
            conn.exec_driver_sql("DROP TABLE webhook_inbox_probe")
    with Inbox(inbox_url) as inbox:
        with pytest.raises(InboxUnavailable):
            inbox.store(_event("evt_new"))
        with pytest.raises(InboxUnavailable):
            inbox.check_writable()
        inbox.migrate()
        inbox.migrate()
        assert inbox.store(_event("evt_new")) == "stored"
        inbox.check_writable()
        events, _ = _once_readable(inbox, 2)
        assert [e.event_id for e in events] == ["evt_old", "evt_new"]
        # a cursor kept before commit positions (a bare inbox id) goes on after the event it names
        assert [e.event_id for e in inbox.read_page(Position.parse(str(events[0].id)))[0]] == ["evt_new"]


def test_redacting_bodies_rewrites_events_and_conflicts_in_place(inbox: Inbox):
    day = datetime(2025, 11, 5, 10, tzinfo=UTC)
    inbox.store(_event("evt_1", b'{"email": "gone@example.com"}', day))
    inbox.store(_event("evt_2", b'{"email": "kept@example.com"}', day))
    inbox.store(_event("evt_3", b'{"email": "gone@example.com"}', day + timedelta(days=1)))
    inbox.store(_event("evt_1", b'{"email": "gone@example.com", "resent": true}', day))  # a conflict

    def redact(text: str) -> tuple[str, int]:
        return text.replace("gone@example.com", "[erased]"), text.count("gone@example.com")

    assert inbox.redact_bodies("stripe", redact, dates=[day.date()]) == {day.date(): 1}
    events = {e.event_id: e for e in inbox.read_since(0)}
    assert events["evt_1"].body == b'{"email": "[erased]"}'
    assert events["evt_1"].body_sha256 == sha256_hex(events["evt_1"].body)
    assert events["evt_2"].body == b'{"email": "kept@example.com"}'
    assert b"gone@" in events["evt_3"].body  # another date: not asked for
    assert [c.body for c in inbox.conflicts()] == [b'{"email": "[erased]", "resent": true}']
    assert inbox.redact_bodies("stripe", redact) == {(day + timedelta(days=1)).date(): 1}
    assert all(b"gone@" not in e.body for e in inbox.read_since(0))
