import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from dagster_project.lib.intake.inbox import InboundEvent, Inbox, InboxUnavailable, migrate, sha256_hex

# trust auth on loopback, as on the build machines and in CI; an unreachable server fails these tests
POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def inbox_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database per test: a SQLite file, or a PostgreSQL schema of its own (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'webhooks' / 'inbox.sqlite'}"
        return
    schema = f"test_inbox_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture
def inbox(inbox_url: str) -> Iterator[Inbox]:
    migrate(inbox_url)
    with Inbox(inbox_url) as inbox:
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


def test_concurrent_writers_store_each_event_once(inbox: Inbox):
    # 8 threads deliver the same 50 events: every store succeeds, each event lands once
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
