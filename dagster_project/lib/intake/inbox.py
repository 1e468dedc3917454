"""Durable webhook inbox: every verified delivery is committed here before the sender gets its 2xx.

Three tables, created by `migrate()`:

* ``webhook_events``: one row per (provider, event id), holding the body exactly as received, its SHA-256,
  the headers that matter and when it arrived. ``event_date`` is the bronze partition the event belongs to:
  the UTC date it was created, or the date it was received when the creation date is before the first
  business date (`Inbox(first_business_date=...)`) or after the day of receipt, so that every stored event has a
  partition to reach.
* ``webhook_conflicts``: a delivery that reuses a stored event id with a different body. The stored row is
  never overwritten (the first body wins); the conflicting body is kept here with both hashes.
* ``webhook_inbox_probe``: one row that readiness rewrites to prove the inbox takes writes.

SQLite is the embedded default and PostgreSQL the production store; the URL decides. Writers take no table
lock: the unique key alone settles duplicates, so several receivers write at once. Ids are then allocated in
one order and committed in another, so a reader that keeps a cursor (the bronze sensor) follows the commit
position ``(commit_xid, id)``: on PostgreSQL ``commit_xid`` is the writing transaction's id and rows are read
only below the oldest transaction still running (``pg_snapshot_xmin``), so nothing can later commit behind
the cursor; SQLite serialises its writers (``BEGIN IMMEDIATE``), ids commit in order and ``commit_xid`` is 0.

PostgreSQL sessions run with a lock timeout and a statement timeout, SQLite with a busy timeout, so a lock
held elsewhere turns into a quick `InboxUnavailable` (a 503 the sender retries), never a request that hangs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    # the commit position's first half (see the module docstring); 0 on SQLite and for rows written before it
    sa.Column("commit_xid", sa.BigInteger(), nullable=False, server_default="0"),
    sa.UniqueConstraint("provider", "event_id", name="uq_webhook_events_provider_event_id"),
    sa.Index("ix_webhook_events_provider_event_date", "provider", "event_date"),
    sa.Index("ix_webhook_events_commit_position", "commit_xid", "id"),
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
    sa.Column("commit_xid", sa.BigInteger(), nullable=False, server_default="0"),
    # a resend of the same conflicting body is recorded once
    sa.UniqueConstraint(
        "provider", "event_id", "received_sha256", name="uq_webhook_conflicts_provider_event_id_sha256"
    ),
    sa.Index("ix_webhook_conflicts_commit_position", "commit_xid", "id"),
)

webhook_inbox_probe = sa.Table(
    "webhook_inbox_probe",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
)

# Columns added after the first release: `migrate()` adds them to tables created before (name -> DDL type).
_ADDED_COLUMNS = {
    "webhook_events": {"commit_xid": "BIGINT NOT NULL DEFAULT 0"},
    "webhook_conflicts": {"commit_xid": "BIGINT NOT NULL DEFAULT 0"},
}


class InboxUnavailable(Exception):
    """The inbox could not be read or written. The message names the error class only, never values."""


class UnstorableEvent(Exception):
    """The database refuses this event's values (a NUL in a text column, a date it cannot hold): storing it
    again will fail the same way, so the sender must be told, not asked to retry. Other events of the same
    batch are unaffected. The message names the error class only, never values."""


# Errors raised by one event's values rather than by the inbox: the driver refusing a parameter before
# sending it (ValueError, UnicodeEncodeError) or the database refusing the data.
_PER_EVENT_ERRORS = (ValueError, sa.exc.DataError, sa.exc.IntegrityError)


def partition_date(created_at: datetime, received_at: datetime, first: date | None) -> date:
    """The bronze partition of an event: the UTC date it was created, unless that date has no partition
    (before `first`, the first business date; None: no lower bound) or is after the day it was received (a
    wrong clock, a forged date), in which case the date it was received. Both inputs are stored, so the
    choice is a pure function of the row."""
    created, received = _utc(created_at).date(), _utc(received_at).date()
    return created if (first is None or first <= created) and created <= received else received


def sha256_hex(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes; everything stored is UTC."""
    if value.tzinfo is UTC:
        return value
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
class PreparedEvents:
    """Deliveries with the parameters of their insert already computed (`Inbox.prepare`)."""

    events: tuple[InboundEvent, ...]
    parameters: tuple[tuple[Any, ...], ...]

    def __len__(self) -> int:
        return len(self.events)


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
    commit_xid: int = 0  # with `id`, the event's commit position

    @property
    def position(self) -> Position:
        return Position(self.commit_xid, self.id)

    @property
    def redated(self) -> bool:
        """Whether the event is filed under the date it was received, its creation date having no partition."""
        return self.event_created_at.date() != self.event_date

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
    event_date: date | None = None  # the bronze partition of the stored event it conflicts with


@dataclass(frozen=True, order=True)
class Position:
    """A commit position in the inbox: everything up to it has been read (see the module docstring)."""

    commit_xid: int = 0
    id: int = 0

    def __str__(self) -> str:
        return f"{self.commit_xid}:{self.id}"

    @classmethod
    def parse(cls, text: str | int | None) -> Position:
        """From `str(position)`; a bare number is an inbox id from before commit positions (`commit_xid` 0)."""
        if text is None or text == "":
            return cls()
        if isinstance(text, int):
            return cls(0, text)
        xid, sep, row_id = text.partition(":")
        return cls(int(xid), int(row_id)) if sep else cls(0, int(xid))


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


def _postgres_options(existing: str | None, lock_timeout_seconds: float, statement_timeout_seconds: float) -> str:
    """libpq `options` setting the session's timeouts from its first statement; options already in the URL
    come last, so a URL that sets a timeout itself keeps it."""
    lock_ms, statement_ms = int(lock_timeout_seconds * 1000), int(statement_timeout_seconds * 1000)
    ours = f"-c lock_timeout={lock_ms} -c statement_timeout={statement_ms}"
    return f"{ours} {existing}" if existing else ours


def create_inbox_engine(
    url: str, *, lock_timeout_seconds: float = 2.0, statement_timeout_seconds: float = 10.0
) -> Engine:
    """An engine for the inbox URL; connects lazily, so an unreachable database fails per call, not here.

    `lock_timeout_seconds` bounds any wait on a lock held elsewhere (SQLite's busy timeout, PostgreSQL's
    lock_timeout); `statement_timeout_seconds` bounds one PostgreSQL statement.
    """
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(
            parsed,
            hide_parameters=True,
            connect_args={"timeout": lock_timeout_seconds},
        )
        _configure_sqlite(engine, lock_timeout_seconds)
        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        if "connect_timeout" not in parsed.query:
            # an unreachable server must turn into a quick 503, not a request stuck in a TCP timeout
            connect_args["connect_timeout"] = 10
        existing = parsed.query.get("options")
        connect_args["options"] = _postgres_options(
            existing if isinstance(existing, str) else None, lock_timeout_seconds, statement_timeout_seconds
        )
        parsed = parsed.difference_update_query(["options"])
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


def _unstorable(error: Exception) -> UnstorableEvent:
    orig = getattr(error, "orig", None)
    name = type(orig).__name__ if orig is not None else type(error).__name__
    return UnstorableEvent(f"the inbox cannot store this event ({name})")


def _identity(value: Any) -> Any:
    return value


def _sqlite_datetime(value: datetime) -> str:
    """SQLAlchemy's SQLite text for a UTC datetime (``2025-11-05 12:30:00.000000``) at a third less CPU."""
    # SQLAlchemy's own format; %-formatting costs half of what an f-string with format specifiers does here
    return "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (  # noqa: UP031
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
    )


class _BatchInsert:
    """The receiver's hot statement, a multi-row insert of events that skips stored ids, as driver SQL.

    Built with SQLAlchemy, the statement cannot be cached (its ON CONFLICT clause has no cache key), so it was
    compiled again for every commit batch, and each value went through SQLAlchemy's per-row parameter
    machinery: together more CPU than the rest of a delivery's storage. Here the SQL text is built once per
    batch size and runs on a driver connection (`Inbox.store_many`). Values go through SQLAlchemy's own type
    processors, except three that give the same text at a fraction of the cost: SQLite's dates and times
    (which SQLAlchemy formats field by field in Python) and the headers' JSON. `test_inbox` holds each of them
    and a whole stored row to SQLAlchemy's output, so the stored bytes are what any other write would store.
    """

    columns = (
        "provider",
        "event_id",
        "event_type",
        "event_created_at",
        "event_date",
        "body",
        "body_sha256",
        "headers",
        "received_at",
    )
    max_rows = 500  # rows per statement: 4,500 parameters, far below what either database allows

    def __init__(self, dialect: sa.Dialect) -> None:
        self._marker = "?" if dialect.paramstyle == "qmark" else "%s"
        self._sqlite = dialect.name == "sqlite"
        commit_xid = "0" if self._sqlite else "pg_current_xact_id()::text::bigint"
        self._values = "(" + ", ".join([self._marker] * len(self.columns)) + f", {commit_xid})"
        self._head = f"INSERT INTO {webhook_events.name} ({', '.join(self.columns)}, commit_xid) VALUES "
        self._tail = " ON CONFLICT (provider, event_id) DO NOTHING"
        if not self._sqlite:
            self._tail += " RETURNING provider, event_id"
        self._sql: dict[int, str] = {}
        self._stored_sql: dict[int, str] = {}
        self.processors = {
            name: webhook_events.c[name].type.dialect_impl(dialect).bind_processor(dialect) or _identity
            for name in self.columns
        }
        self.processors["headers"] = json.dumps
        if dialect.name == "sqlite":
            self.processors["event_created_at"] = self.processors["received_at"] = _sqlite_datetime
            self.processors["event_date"] = date.isoformat
        self._datetime = self.processors["event_created_at"]
        self._date = self.processors["event_date"]
        self._binary = self.processors["body"]
        self._json = self.processors["headers"]

    def statement(self, rows: int) -> str:
        sql = self._sql.get(rows)
        if sql is None:
            sql = self._sql[rows] = self._head + ", ".join([self._values] * rows) + self._tail
        return sql

    def values(self, event: InboundEvent, first_business_date: date | None) -> tuple[Any, ...]:
        """The statement's parameters for one event, in `columns` order."""
        created, received = _utc(event.event_created_at), _utc(event.received_at)
        return (
            event.provider,
            event.event_id,
            event.event_type,
            self._datetime(created),
            self._date(partition_date(created, received, first_business_date)),
            self._binary(event.body),
            event.body_sha256,
            self._json(event.headers),
            self._datetime(received),
        )

    def execute(self, connection: Any, batch: PreparedEvents, *, read_first: bool = False) -> set[tuple[str, str]]:
        """Insert the events of `batch` on a driver connection in autocommit mode, skipping ids already stored,
        and commit; the (provider, event id) of those inserted.

        PostgreSQL: one statement, its own transaction, returning what it inserted (one round trip instead of
        four with a pool checkout's ping, BEGIN and COMMIT). SQLite: BEGIN IMMEDIATE, the insert, COMMIT. The
        insert is not asked to return its rows, which it would do one step at a time, the driver releasing and
        taking back the interpreter lock for each while the event loop wants it. When it inserted every row
        (no resend: the usual case), those are the rows; when not, the transaction is rolled back and run again
        with a read of the ids already stored first (`read_first`). Sound because the write lock, held from
        BEGIN IMMEDIATE, keeps any other writer from storing one of them in between.
        """
        inserted: set[tuple[str, str]] = set()
        cursor = connection.cursor()
        try:
            if self._sqlite:
                cursor.execute("BEGIN IMMEDIATE")
            for start in range(0, len(batch), self.max_rows):
                chunk = batch.events[start : start + self.max_rows]
                parameters = tuple(value for row in batch.parameters[start : start + self.max_rows] for value in row)
                if not self._sqlite:
                    cursor.execute(self.statement(len(chunk)), parameters)
                    inserted.update((provider, event_id) for provider, event_id in cursor.fetchall())
                    continue
                stored = self._stored(cursor, chunk) if read_first else set()
                cursor.execute(self.statement(len(chunk)), parameters)
                if not read_first and cursor.rowcount != len(chunk):
                    connection.rollback()
                    return self.execute(connection, batch, read_first=True)
                inserted.update((e.provider, e.event_id) for e in chunk if (e.provider, e.event_id) not in stored)
            if self._sqlite:
                cursor.execute("COMMIT")
        except BaseException:
            if self._sqlite and connection.in_transaction:
                connection.rollback()
            raise
        finally:
            cursor.close()
        return inserted

    def _stored(self, cursor: Any, events: Sequence[InboundEvent]) -> set[tuple[str, str]]:
        """The (provider, event id) of `events` already in the inbox, one statement per provider."""
        by_provider: dict[str, list[str]] = {}
        for event in events:
            by_provider.setdefault(event.provider, []).append(event.event_id)
        stored: set[tuple[str, str]] = set()
        for provider, event_ids in by_provider.items():
            sql = self._stored_sql.get(len(event_ids))
            if sql is None:
                markers = ", ".join([self._marker] * len(event_ids))
                sql = self._stored_sql[len(event_ids)] = (
                    f"SELECT event_id FROM {webhook_events.name} WHERE provider = {self._marker}"
                    f" AND event_id IN ({markers})"
                )
            cursor.execute(sql, (provider, *event_ids))
            stored.update((provider, event_id) for (event_id,) in cursor.fetchall())
        return stored


class Inbox:
    """The webhook inbox behind one database URL."""

    def __init__(
        self,
        url: str,
        *,
        lock_timeout_seconds: float = 2.0,
        statement_timeout_seconds: float = 10.0,
        min_free_bytes: int = 16 * 1024 * 1024,
        first_business_date: date | None = None,
    ) -> None:
        self.url = url
        # events created earlier are filed under the day they were received (see `partition_date`)
        self.first_business_date = first_business_date
        self.engine = create_inbox_engine(
            url, lock_timeout_seconds=lock_timeout_seconds, statement_timeout_seconds=statement_timeout_seconds
        )
        self.lock_timeout_seconds = lock_timeout_seconds
        # SQLite only: below this much free space on the inbox's file system readiness fails, before a commit does
        self.min_free_bytes = min_free_bytes
        self._is_sqlite = self.engine.dialect.name == "sqlite"
        self._is_postgres = self.engine.dialect.name == "postgresql"
        self._writer = self.engine.execution_options(**{_WRITE_OPTION: True})
        self._batch_insert = _BatchInsert(self.engine.dialect) if self._is_sqlite or self._is_postgres else None
        # driver connections that commit batches, one per writing thread, kept open across batches
        self._driver = threading.local()
        self._driver_connections: list[Any] = []
        self._driver_lock = threading.Lock()
        dbapi = self.engine.dialect.loaded_dbapi
        # what the driver raises for one event's values (the others of its batch are then stored one by one)
        self._refused: tuple[type[BaseException], ...] = (ValueError, dbapi.DataError, dbapi.IntegrityError)
        self._driver_error: type[BaseException] = dbapi.Error

    def dispose(self) -> None:
        with self._driver_lock:
            connections, self._driver_connections = self._driver_connections, []
        for connection in connections:
            with contextlib.suppress(Exception):
                connection.close()
        self.engine.dispose()

    def _driver_connection(self) -> Any:
        """This thread's driver connection for batches: made by the engine's pool (so with the same connect
        settings: SQLite's pragmas, PostgreSQL's timeouts) and then detached from it, to be kept."""
        connection = getattr(self._driver, "connection", None)
        if connection is None:
            try:
                proxy = self.engine.raw_connection()
            except SQLAlchemyError as error:
                raise _safe(error) from None
            except self._driver_error as error:  # the pool lets the driver's own errors through
                raise InboxUnavailable(f"inbox unavailable ({type(error).__name__})") from None
            connection = proxy.driver_connection
            proxy.detach()
            if self._is_postgres:
                connection.autocommit = True  # each batch is one statement, committed by itself
            self._driver.connection = connection
            with self._driver_lock:
                self._driver_connections.append(connection)
        return connection

    def _drop_driver_connection(self) -> None:
        connection = getattr(self._driver, "connection", None)
        self._driver.connection = None
        if connection is not None:
            with self._driver_lock:
                if connection in self._driver_connections:
                    self._driver_connections.remove(connection)
            with contextlib.suppress(Exception):
                connection.close()

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.dispose()

    @property
    def _sqlite_path(self) -> Path | None:
        database = self.engine.url.database
        return Path(database) if self._is_sqlite and database not in (None, "", ":memory:") else None

    def migrate(self) -> None:
        """Create the tables and indexes if they do not exist, and add columns newer than a table (idempotent)."""
        if self._sqlite_path is not None:
            self._sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            metadata.create_all(self._writer)
            with self._writer.begin() as conn:
                inspector = sa.inspect(conn)
                for table_name, columns in _ADDED_COLUMNS.items():
                    present = {c["name"] for c in inspector.get_columns(table_name)}
                    for name, ddl in columns.items():
                        if name not in present:
                            conn.exec_driver_sql(f"ALTER TABLE {table_name} ADD COLUMN {name} {ddl}")
                for table in metadata.sorted_tables:
                    indexes = {i["name"] for i in inspector.get_indexes(table.name)}
                    for index in table.indexes:
                        if index.name not in indexes:
                            index.create(conn)
        except SQLAlchemyError as error:
            raise _safe(error) from None

    def ping(self) -> None:
        """Raise `InboxUnavailable` unless the inbox tables can be read."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.select(webhook_events.c.id).limit(1)).all()
        except SQLAlchemyError as error:
            raise _safe(error) from None

    def check_writable(self, timeout_seconds: float = 2.0) -> None:
        """Raise `InboxUnavailable` unless a write to the inbox commits within about `timeout_seconds`.

        The probe takes the lock an event insert needs (SQLite's write lock; PostgreSQL's ROW EXCLUSIVE on the
        event tables) and commits a row, so a read-only database, a lock held elsewhere or a database that
        refuses writes all fail it. On SQLite it also fails when the file system has less than
        `min_free_bytes` left, since SQLite finds a full disk only when a commit needs to grow its files.
        """
        millis = max(1, int(timeout_seconds * 1000))
        now = datetime.now(UTC)
        try:
            if self._is_sqlite and self._sqlite_path is not None:
                stats = os.statvfs(self._sqlite_path.parent)
                if stats.f_bavail * stats.f_frsize < self.min_free_bytes:
                    raise InboxUnavailable("inbox unavailable (file system full)")
            with self._writer.connect() as conn:
                if self._is_sqlite:
                    # on the driver's connection: SQLAlchemy would begin a transaction for it, and the wait for
                    # the write lock must be short before BEGIN IMMEDIATE is issued
                    conn.connection.driver_connection.execute(f"PRAGMA busy_timeout={millis}")
                try:
                    with conn.begin():
                        if self._is_postgres:
                            conn.execute(
                                sa.text(
                                    "SELECT set_config('lock_timeout', :ms, true),"
                                    " set_config('statement_timeout', :ms, true)"
                                ),
                                {"ms": str(millis)},
                            )
                            conn.exec_driver_sql("LOCK TABLE webhook_events, webhook_conflicts IN ROW EXCLUSIVE MODE")
                        for table in (webhook_events, webhook_conflicts):  # both there, with today's columns
                            conn.execute(sa.select(table.c.commit_xid).limit(1)).all()
                        insert = self._insert(webhook_inbox_probe).values(id=1, checked_at=now)
                        conn.execute(insert.on_conflict_do_update(index_elements=["id"], set_={"checked_at": now}))
                finally:
                    if self._is_sqlite:
                        restore = f"PRAGMA busy_timeout={int(self.lock_timeout_seconds * 1000)}"
                        conn.connection.driver_connection.execute(restore)
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

    def _commit_xid(self) -> Any:
        """The value of `commit_xid` for a row written now: the writing transaction's id on PostgreSQL."""
        if self._is_postgres:
            return sa.literal_column("pg_current_xact_id()::text::bigint")
        return 0

    def store(self, event: InboundEvent) -> StoreOutcome:
        """Store a delivery once; the transaction is committed before this returns.

        ``stored``: first time this (provider, event id) was seen. ``duplicate``: same id and same body
        (a resend). ``conflict``: same id, different body; the first body stays, the new one is recorded in
        ``webhook_conflicts``. Raises `InboxUnavailable` when the database cannot be written and
        `UnstorableEvent` when it refuses this event's values.
        """
        [outcome] = self.store_many([event])
        if isinstance(outcome, UnstorableEvent):
            raise outcome
        return outcome

    def prepare(self, events: Sequence[InboundEvent]) -> PreparedEvents:
        """The deliveries with their insert's parameters, for `store_many`.

        The part of storing that is only computation, for a caller to run where it suits it: the receiver
        does it on its event loop, so that the thread committing holds the interpreter lock only briefly
        between database calls instead of contending for it with the loop for every value it converts.
        """
        first = self.first_business_date
        if self._batch_insert is None:
            return PreparedEvents(tuple(events), ())
        return PreparedEvents(tuple(events), tuple(self._batch_insert.values(e, first) for e in events))

    def store_many(self, events: Sequence[InboundEvent] | PreparedEvents) -> list[StoreOutcome | UnstorableEvent]:
        """`store` for several deliveries, outcomes in the same order. The new events of the batch are
        committed together (one transaction, one fsync); resends are then told apart from conflicts, and
        conflicts recorded, in a second transaction, only when the batch has resends.

        An event whose values the database refuses gets an `UnstorableEvent` in its place and the others are
        committed without it. `InboxUnavailable` when the inbox itself fails: nothing was stored, or (a failure
        in the second transaction) only new events, which a retry finds as duplicates. Events later in the
        batch see the earlier ones, so the same event twice in a batch is ``stored`` then ``duplicate``.
        `events` may come from `prepare`.
        """
        batch = events if isinstance(events, PreparedEvents) else self.prepare(events)
        if not batch.events:
            return []
        if self._batch_insert is None:
            raise NotImplementedError(f"inbox backend {self.engine.dialect.name!r} is not supported")
        for attempt in (1, 2):
            connection = self._driver_connection()
            try:
                inserted = self._batch_insert.execute(connection, batch)
            except self._refused:
                return self._store_one_by_one(batch.events)  # one of them cannot be stored: find which
            except self._driver_error as error:
                self._drop_driver_connection()  # a connection that failed is not trusted again
                # A connection the server closed since the last batch (a restart, an idle timeout): once, on a
                # new one. Whatever the lost connection may have committed is found stored, never stored twice.
                if attempt == 1 and self.engine.dialect.is_disconnect(error, connection, None):
                    continue
                raise InboxUnavailable(f"inbox unavailable ({type(error).__name__})") from None
            except BaseException:
                self._drop_driver_connection()
                raise
            return self._outcomes(batch.events, inserted)
        raise AssertionError("unreachable")

    def _store_one_by_one(self, events: Sequence[InboundEvent]) -> list[StoreOutcome | UnstorableEvent]:
        """`store_many` one statement per event, to give an event the database refuses its own outcome."""
        outcomes: list[StoreOutcome | UnstorableEvent | None] = [None] * len(events)
        pending = list(range(len(events)))
        while pending:
            current = pending[0]
            try:
                with self._writer.begin() as conn:
                    for current in pending:
                        outcomes[current] = self._store_one(conn, events[current])
            except _PER_EVENT_ERRORS as error:
                # the transaction is rolled back; commit the others again without the event that broke it
                outcomes[current] = _unstorable(error)
                pending = [i for i in pending if i != current]
            except SQLAlchemyError as error:
                raise _safe(error) from None
            else:
                break
        return [outcome for outcome in outcomes if outcome is not None]

    def _row(self, event: InboundEvent) -> dict[str, Any]:
        created, received = _utc(event.event_created_at), _utc(event.received_at)
        return {
            "provider": event.provider,
            "event_id": event.event_id,
            "event_type": event.event_type,
            "event_created_at": created,
            "event_date": partition_date(created, received, self.first_business_date),
            "body": event.body,
            "body_sha256": event.body_sha256,
            "headers": dict(event.headers),
            "received_at": received,
        }

    def _outcomes(self, events: Sequence[InboundEvent], inserted: set[tuple[str, str]]) -> list[StoreOutcome]:
        """The outcome of each event of a batch whose insert stored `inserted`: the others were stored before
        (or earlier in the batch) and are a duplicate or a conflict, which one read of the stored hashes and
        one insert of the conflicts settle."""
        outcomes: list[StoreOutcome | None] = [None] * len(events)
        inserted = set(inserted)
        skipped: list[int] = []
        for i, event in enumerate(events):
            key = (event.provider, event.event_id)
            if key in inserted:
                inserted.discard(key)  # a second delivery of the same id in this batch was skipped, not stored
                outcomes[i] = "stored"
            else:
                skipped.append(i)
        if skipped:
            try:
                with self._writer.begin() as conn:
                    self._settle_skipped(conn, events, skipped, outcomes)
            except _PER_EVENT_ERRORS:
                # a conflict the database cannot record: each skipped delivery on its own (they are all stored)
                for i, outcome in zip(skipped, self._store_one_by_one([events[i] for i in skipped]), strict=True):
                    outcomes[i] = outcome  # type: ignore[assignment]
            except SQLAlchemyError as error:
                raise _safe(error) from None
        return [outcome for outcome in outcomes if outcome is not None]

    def _settle_skipped(
        self, conn: Connection, events: Sequence[InboundEvent], skipped: list[int], outcomes: list[Any]
    ) -> None:
        keys = sorted({(events[i].provider, events[i].event_id) for i in skipped})
        stored = dict(
            ((row.provider, row.event_id), row.body_sha256)
            for row in conn.execute(
                sa.select(webhook_events.c.provider, webhook_events.c.event_id, webhook_events.c.body_sha256).where(
                    sa.tuple_(webhook_events.c.provider, webhook_events.c.event_id).in_(keys)
                )
            )
        )
        conflicts = []
        for i in skipped:
            event, row = events[i], self._row(events[i])
            stored_sha256 = stored[(event.provider, event.event_id)]
            if stored_sha256 == row["body_sha256"]:
                outcomes[i] = "duplicate"
                continue
            outcomes[i] = "conflict"
            conflicts.append(
                {
                    "provider": event.provider,
                    "event_id": event.event_id,
                    "stored_sha256": stored_sha256,
                    "received_sha256": row["body_sha256"],
                    "body": event.body,
                    "headers": row["headers"],
                    "received_at": row["received_at"],
                }
            )
        if conflicts:
            conn.execute(
                self._insert(webhook_conflicts)
                .values(commit_xid=self._commit_xid())
                .on_conflict_do_nothing(index_elements=["provider", "event_id", "received_sha256"]),
                conflicts,
            )

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
                event_date=partition_date(created, received, self.first_business_date),
                body=event.body,
                body_sha256=digest,
                headers=dict(event.headers),
                received_at=received,
                commit_xid=self._commit_xid(),
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
                commit_xid=self._commit_xid(),
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
            commit_xid=row.commit_xid,
        )

    def _select(self, query: sa.Select[Any]) -> list[StoredEvent]:
        try:
            with self.engine.connect() as conn:
                return [self._to_event(row) for row in conn.execute(query)]
        except SQLAlchemyError as error:
            raise _safe(error) from None

    def redact_bodies(
        self,
        provider: str,
        redact: Callable[[str], tuple[str, int]],
        *,
        dates: Iterable[date] | None = None,
        batch_size: int = 1000,
    ) -> dict[date, int]:
        """Rewrite the stored bodies of `provider`'s events, and of its conflicting deliveries, through
        `redact` (text -> redacted text, values removed); returns how many events changed per event date.

        The one change the inbox allows to a stored event (erasure): the body and its checksum are replaced
        in place, the id, dates and commit position stay, so bronze reloads the event from the same partition.
        `dates`: only events filed under these (conflicting deliveries, which have no date, are all read)."""
        wanted = sorted(set(dates)) if dates is not None else None
        changed: dict[date, int] = {}
        for table, date_of in ((webhook_events, "event_date"), (webhook_conflicts, None)):
            cursor = 0
            while True:
                query = (
                    sa.select(table.c.id, table.c.body, *([table.c[date_of]] if date_of else []))
                    .where(table.c.provider == provider, table.c.id > cursor)
                    .where(table.c.event_date.in_(wanted) if date_of and wanted is not None else sa.true())
                    .order_by(table.c.id)
                    .limit(batch_size)
                )
                try:
                    with self._writer.begin() as conn:
                        rows = conn.execute(query).all()
                        for row in rows:
                            text, count = redact(bytes(row.body).decode("utf-8", errors="surrogateescape"))
                            if not count:
                                continue
                            body = text.encode("utf-8", errors="surrogateescape")
                            # a conflict keeps the checksum it was recorded under (part of its unique key)
                            values = {"body": body, "body_sha256": sha256_hex(body)} if date_of else {"body": body}
                            conn.execute(sa.update(table).where(table.c.id == row.id).values(**values))
                            if date_of:
                                day = row[2]
                                changed[day] = changed.get(day, 0) + 1
                except SQLAlchemyError as error:
                    raise _safe(error) from None
                if not rows:
                    break
                cursor = rows[-1].id
        return changed

    def read_since(self, cursor: int, limit: int = 1000, *, provider: str | None = None) -> list[StoredEvent]:
        """Events with ``id > cursor`` in id order, at most `limit`; the last id is the next cursor."""
        query = sa.select(webhook_events).where(webhook_events.c.id > cursor)
        if provider is not None:
            query = query.where(webhook_events.c.provider == provider)
        return self._select(query.order_by(webhook_events.c.id).limit(limit))

    def _committed_before(self, table: sa.Table, after: Position) -> list[Any]:
        """Conditions selecting rows past `after` whose commit position can no longer be overtaken."""
        commit_xid, row_id = table.c.commit_xid, table.c.id
        conditions: list[Any] = [
            sa.or_(commit_xid > after.commit_xid, sa.and_(commit_xid == after.commit_xid, row_id > after.id))
        ]
        if self._is_postgres:
            # every transaction below the snapshot's xmin has ended; a later writer gets a larger transaction id
            horizon = sa.literal_column("pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            conditions.append(commit_xid < horizon)
        return conditions

    def read_page(self, after: Position, limit: int = 1000) -> tuple[list[StoredEvent], Position]:
        """Events committed past `after`, in commit order, at most `limit`, and the position to read from next.

        A reader that always continues from the returned position sees every event exactly once, however
        many receivers write at once and in whatever order their transactions commit.
        """
        rows, position = self._page(sa.select(webhook_events), webhook_events, after, limit)
        return [self._to_event(row) for row in rows], position

    def read_conflicts_page(self, after: Position, limit: int = 1000) -> tuple[list[Conflict], Position]:
        """Conflicts recorded past `after`, in commit order, with the partition of the event each concerns."""
        rows, position = self._page(self._conflicts_query(), webhook_conflicts, after, limit)
        return [self._to_conflict(row) for row in rows], position

    def _page(self, query: sa.Select, table: sa.Table, after: Position, limit: int) -> tuple[list, Position]:
        """The rows of `query` on `table` committed past `after`, in commit order, and the next position."""
        query = query.where(*self._committed_before(table, after)).order_by(table.c.commit_xid, table.c.id).limit(limit)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
        except SQLAlchemyError as error:
            raise _safe(error) from None
        return rows, Position(rows[-1].commit_xid, rows[-1].id) if rows else after

    def conflicts_for_dates(self, provider: str, dates: Iterable[date]) -> list[Conflict]:
        """Conflicts about events of `provider` filed under one of `dates` (what a bronze partition holds)."""
        wanted = sorted(set(dates))
        if not wanted:
            return []
        query = (
            self._conflicts_query()
            .where(webhook_conflicts.c.provider == provider, webhook_events.c.event_date.in_(wanted))
            .order_by(webhook_conflicts.c.id)
        )
        try:
            with self.engine.connect() as conn:
                return [self._to_conflict(row) for row in conn.execute(query)]
        except SQLAlchemyError as error:
            raise _safe(error) from None

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

    @staticmethod
    def _conflicts_query() -> sa.Select[Any]:
        stored = webhook_events.c
        return sa.select(webhook_conflicts, stored.event_date).join(
            webhook_events,
            sa.and_(stored.provider == webhook_conflicts.c.provider, stored.event_id == webhook_conflicts.c.event_id),
            isouter=True,
        )

    @staticmethod
    def _to_conflict(row: sa.Row[Any]) -> Conflict:
        return Conflict(
            id=row.id,
            provider=row.provider,
            event_id=row.event_id,
            stored_sha256=row.stored_sha256,
            received_sha256=row.received_sha256,
            body=bytes(row.body),
            received_at=_utc(row.received_at),
            event_date=row.event_date,
        )

    def conflicts(self, provider: str | None = None) -> list[Conflict]:
        query = self._conflicts_query().order_by(webhook_conflicts.c.id)
        if provider is not None:
            query = query.where(webhook_conflicts.c.provider == provider)
        try:
            with self.engine.connect() as conn:
                return [self._to_conflict(row) for row in conn.execute(query)]
        except SQLAlchemyError as error:
            raise _safe(error) from None


def migrate(url: str) -> None:
    """Create the inbox schema at `url` (``medallion webhooks migrate``, the Helm migration Job)."""
    with Inbox(url) as inbox:
        inbox.migrate()
