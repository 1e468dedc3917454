"""Durable webhook inbox: every verified delivery is committed here before the sender gets its 2xx.

Two tables, created by `migrate()`:

* ``webhook_events``: one row per (provider, event id), holding the body exactly as received, its SHA-256,
  the headers that matter and when it arrived. ``id`` grows with every stored event and is the cursor the
  bronze sensor keeps.
* ``webhook_conflicts``: a delivery that reuses a stored event id with a different body. The stored row is
  never overwritten (the first body wins); the conflicting body is kept here with both hashes.

SQLite is the embedded default and PostgreSQL the production store; the URL decides. Writers are
serialised (SQLite ``BEGIN IMMEDIATE``; PostgreSQL an ``EXCLUSIVE`` table lock, which still lets readers
through), so ids become visible in increasing order and a reader that keeps ``id > cursor`` never skips an
event that was committed late.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

StoreOutcome = Literal["stored", "duplicate", "conflict"]

MAX_ID_LENGTH = 255  # provider, event id and event type columns; longer values are refused before storing

metadata = sa.MetaData()

# BIGINT on PostgreSQL; on SQLite only "INTEGER PRIMARY KEY" is the autoincrementing rowid
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

webhook_events = sa.Table(
    "webhook_events",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("provider", sa.String(MAX_ID_LENGTH), nullable=False),
    sa.Column("event_id", sa.String(MAX_ID_LENGTH), nullable=False),
    sa.Column("event_type", sa.String(MAX_ID_LENGTH), nullable=False),
    sa.Column("event_created_at", sa.DateTime(timezone=True), nullable=False),
    # business date of the event (UTC date of event_created_at): the bronze partition it belongs to
    sa.Column("event_date", sa.Date(), nullable=False),
    sa.Column("body", sa.LargeBinary(), nullable=False),
    sa.Column("body_sha256", sa.String(64), nullable=False),
    sa.Column("headers", sa.JSON(), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("provider", "event_id", name="uq_webhook_events_provider_event_id"),
    sa.Index("ix_webhook_events_provider_event_date", "provider", "event_date"),
)

webhook_conflicts = sa.Table(
    "webhook_conflicts",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("provider", sa.String(MAX_ID_LENGTH), nullable=False),
    sa.Column("event_id", sa.String(MAX_ID_LENGTH), nullable=False),
    sa.Column("stored_sha256", sa.String(64), nullable=False),
    sa.Column("received_sha256", sa.String(64), nullable=False),
    sa.Column("body", sa.LargeBinary(), nullable=False),
    sa.Column("headers", sa.JSON(), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    # a resend of the same conflicting body is recorded once
    sa.UniqueConstraint(
        "provider", "event_id", "received_sha256", name="uq_webhook_conflicts_provider_event_id_sha256"
    ),
)


class InboxUnavailable(Exception):
    """The inbox could not be read or written. The message names the error class only, never values."""


def sha256_hex(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes; everything stored is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class InboundEvent:
    """A verified delivery, ready to store."""

    provider: str
    event_id: str
    event_type: str
    event_created_at: datetime  # timezone-aware
    body: bytes = field(repr=False)  # exactly as received; kept out of repr so it cannot reach a log line
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def body_sha256(self) -> str:
        return sha256_hex(self.body)


@dataclass(frozen=True)
class StoredEvent:
    id: int
    provider: str
    event_id: str
    event_type: str
    event_created_at: datetime
    event_date: date
    body: bytes = field(repr=False)
    body_sha256: str
    headers: dict[str, Any] = field(repr=False)
    received_at: datetime

    @property
    def text(self) -> str:
        """The body as text (it was checked to be UTF-8 before it was stored)."""
        return self.body.decode("utf-8")


@dataclass(frozen=True)
class Conflict:
    id: int
    provider: str
    event_id: str
    stored_sha256: str
    received_sha256: str
    body: bytes = field(repr=False)
    received_at: datetime


_WRITE_OPTION = "medallion_inbox_write"


def _configure_sqlite(engine: Engine, busy_timeout_seconds: float) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # let SQLAlchemy's "begin" event below issue BEGIN instead of the driver's implicit, deferred one
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_seconds * 1000)}")
        # WAL lets readers (sensor, readiness) run beside the writer. synchronous=FULL fsyncs every commit:
        # a 2xx promises the event survives a crash of the machine, not only of the process.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # a writer takes the write lock up front (waiting up to busy_timeout), so it never fails on upgrading
        # a read lock, and writers commit in id order; readers keep a plain deferred transaction
        if connection.get_execution_options().get(_WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")


def create_inbox_engine(url: str, *, busy_timeout_seconds: float = 30.0) -> Engine:
    """An engine for the inbox URL; connects lazily, so an unreachable database fails per call, not here."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(
            parsed,
            hide_parameters=True,
            connect_args={"timeout": busy_timeout_seconds},
        )
        _configure_sqlite(engine, busy_timeout_seconds)
        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        # an unreachable server must turn into a quick 503, not a request stuck in a TCP timeout
        connect_args["connect_timeout"] = 10
    return sa.create_engine(
        parsed,
        hide_parameters=True,  # bodies are parameters: keep them out of error messages and logs
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=10,
        connect_args=connect_args,
    )


def _safe(error: SQLAlchemyError) -> InboxUnavailable:
    orig = getattr(error, "orig", None)
    name = type(orig).__name__ if orig is not None else type(error).__name__
    return InboxUnavailable(f"inbox unavailable ({name})")


class Inbox:
    """The webhook inbox behind one database URL."""

    def __init__(self, url: str, *, busy_timeout_seconds: float = 30.0) -> None:
        self.url = url
        self.engine = create_inbox_engine(url, busy_timeout_seconds=busy_timeout_seconds)
        self._is_sqlite = self.engine.dialect.name == "sqlite"
        self._is_postgres = self.engine.dialect.name == "postgresql"
        self._writer = self.engine.execution_options(**{_WRITE_OPTION: True})

    def dispose(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.dispose()

    def migrate(self) -> None:
        """Create the tables and indexes if they do not exist (idempotent)."""
        if self._is_sqlite and self.engine.url.database not in (None, "", ":memory:"):
            Path(self.engine.url.database).parent.mkdir(parents=True, exist_ok=True)
        try:
            metadata.create_all(self._writer)
        except SQLAlchemyError as error:
            raise _safe(error) from None

    def ping(self) -> None:
        """Raise `InboxUnavailable` unless the inbox tables can be read."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.select(webhook_events.c.id).limit(1)).all()
        except SQLAlchemyError as error:
            raise _safe(error) from None

    def _insert(self, table: sa.Table) -> Any:
        if self._is_sqlite:
            from sqlalchemy.dialects.sqlite import insert
        elif self._is_postgres:
            from sqlalchemy.dialects.postgresql import insert
        else:
            raise NotImplementedError(f"inbox backend {self.engine.dialect.name!r} is not supported")
        return insert(table)

    def store(self, event: InboundEvent) -> StoreOutcome:
        """Store a delivery once; the transaction is committed before this returns.

        ``stored``: first time this (provider, event id) was seen. ``duplicate``: same id and same body
        (a resend). ``conflict``: same id, different body; the first body stays, the new one is recorded in
        ``webhook_conflicts``. Raises `InboxUnavailable` when the database cannot be written.
        """
        return self.store_many([event])[0]

    def store_many(self, events: Sequence[InboundEvent]) -> list[StoreOutcome]:
        """`store` for several deliveries in one transaction (one fsync), outcomes in the same order.

        All or nothing: when it raises, none of them is stored. Events later in the batch see the earlier
        ones, so the same event twice in a batch is ``stored`` then ``duplicate``.
        """
        if not events:
            return []
        try:
            with self._writer.begin() as conn:
                if self._is_postgres:
                    # serialise writers so ids commit in order (see module docstring); readers still pass
                    conn.exec_driver_sql("LOCK TABLE webhook_events IN EXCLUSIVE MODE")
                return [self._store_one(conn, event) for event in events]
        except SQLAlchemyError as error:
            raise _safe(error) from None

    def _store_one(self, conn: Connection, event: InboundEvent) -> StoreOutcome:
        created = _utc(event.event_created_at)
        received = _utc(event.received_at)
        digest = event.body_sha256
        inserted = conn.execute(
            self._insert(webhook_events)
            .values(
                provider=event.provider,
                event_id=event.event_id,
                event_type=event.event_type,
                event_created_at=created,
                event_date=created.date(),
                body=event.body,
                body_sha256=digest,
                headers=dict(event.headers),
                received_at=received,
            )
            .on_conflict_do_nothing(index_elements=["provider", "event_id"])
            .returning(webhook_events.c.id)
        ).first()
        if inserted is not None:
            return "stored"
        stored_sha256 = conn.execute(
            sa.select(webhook_events.c.body_sha256).where(
                webhook_events.c.provider == event.provider,
                webhook_events.c.event_id == event.event_id,
            )
        ).scalar_one()
        if stored_sha256 == digest:
            return "duplicate"
        conn.execute(
            self._insert(webhook_conflicts)
            .values(
                provider=event.provider,
                event_id=event.event_id,
                stored_sha256=stored_sha256,
                received_sha256=digest,
                body=event.body,
                headers=dict(event.headers),
                received_at=received,
            )
            .on_conflict_do_nothing(index_elements=["provider", "event_id", "received_sha256"])
        )
        return "conflict"

    @staticmethod
    def _to_event(row: sa.Row[Any]) -> StoredEvent:
        return StoredEvent(
            id=row.id,
            provider=row.provider,
            event_id=row.event_id,
            event_type=row.event_type,
            event_created_at=_utc(row.event_created_at),
            event_date=row.event_date,
            body=bytes(row.body),
            body_sha256=row.body_sha256,
            headers=dict(row.headers),
            received_at=_utc(row.received_at),
        )

    def _select(self, query: sa.Select[Any]) -> list[StoredEvent]:
        try:
            with self.engine.connect() as conn:
                return [self._to_event(row) for row in conn.execute(query)]
        except SQLAlchemyError as error:
            raise _safe(error) from None

    def read_since(self, cursor: int, limit: int = 1000, *, provider: str | None = None) -> list[StoredEvent]:
        """Events with ``id > cursor`` in id order, at most `limit`; the last id is the next cursor."""
        query = sa.select(webhook_events).where(webhook_events.c.id > cursor)
        if provider is not None:
            query = query.where(webhook_events.c.provider == provider)
        return self._select(query.order_by(webhook_events.c.id).limit(limit))

    def read_for_dates(self, provider: str, dates: Iterable[date]) -> list[StoredEvent]:
        """Every event of `provider` whose business date is in `dates`, in id order (bronze rebuilds)."""
        wanted = sorted(set(dates))
        if not wanted:
            return []
        query = (
            sa.select(webhook_events)
            .where(webhook_events.c.provider == provider, webhook_events.c.event_date.in_(wanted))
            .order_by(webhook_events.c.id)
        )
        return self._select(query)

    def iter_for_dates(
        self, provider: str, dates: Iterable[date], *, batch_size: int = 5000
    ) -> Iterator[list[StoredEvent]]:
        """Like `read_for_dates`, in batches of at most `batch_size`, for partitions too big to hold at once."""
        wanted = sorted(set(dates))
        cursor = 0
        while wanted:
            query = (
                sa.select(webhook_events)
                .where(
                    webhook_events.c.provider == provider,
                    webhook_events.c.event_date.in_(wanted),
                    webhook_events.c.id > cursor,
                )
                .order_by(webhook_events.c.id)
                .limit(batch_size)
            )
            batch = self._select(query)
            if not batch:
                return
            yield batch
            cursor = batch[-1].id

    def event_dates(self, provider: str, *, since_cursor: int = 0) -> list[date]:
        """Distinct business dates of events after `since_cursor` (which partitions new events touch)."""
        query = (
            sa.select(webhook_events.c.event_date)
            .where(webhook_events.c.provider == provider, webhook_events.c.id > since_cursor)
            .distinct()
            .order_by(webhook_events.c.event_date)
        )
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(query).scalars())
        except SQLAlchemyError as error:
            raise _safe(error) from None

    def max_id(self) -> int:
        try:
            with self.engine.connect() as conn:
                return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(webhook_events.c.id), 0))).scalar_one())
        except SQLAlchemyError as error:
            raise _safe(error) from None

    def count(self, provider: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(webhook_events)
        if provider is not None:
            query = query.where(webhook_events.c.provider == provider)
        try:
            with self.engine.connect() as conn:
                return int(conn.execute(query).scalar_one())
        except SQLAlchemyError as error:
            raise _safe(error) from None

    def conflicts(self, provider: str | None = None) -> list[Conflict]:
        query = sa.select(webhook_conflicts).order_by(webhook_conflicts.c.id)
        if provider is not None:
            query = query.where(webhook_conflicts.c.provider == provider)
        try:
            with self.engine.connect() as conn:
                return [
                    Conflict(
                        id=row.id,
                        provider=row.provider,
                        event_id=row.event_id,
                        stored_sha256=row.stored_sha256,
                        received_sha256=row.received_sha256,
                        body=bytes(row.body),
                        received_at=_utc(row.received_at),
                    )
                    for row in conn.execute(query)
                ]
        except SQLAlchemyError as error:
            raise _safe(error) from None


def migrate(url: str) -> None:
    """Create the inbox schema at `url` (``medallion webhooks migrate``, the Helm migration Job)."""
    with Inbox(url) as inbox:
        inbox.migrate()
