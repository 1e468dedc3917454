"""Push a set of rows into an operational table, the way Census and Hightouch sync a model.

The source is the complete desired state, keyed by one column. The target table keeps a `_row_hash`
column (sha256 of the canonical JSON of the source row) as the sync state, so a run

1. reads the target's key -> `_row_hash` map,
2. streams the source, upserting (`INSERT ... ON CONFLICT (key) DO UPDATE`, PostgreSQL and SQLite)
   only rows that are new or whose hash changed, `batch_size` rows per transaction,
3. after the whole source has been read, deletes target rows whose key the source no longer has, in
   batches, one transaction each.

Every batch is atomic and every committed row carries the hash of what was written, so a run that fails
part way leaves each row either as it was or as the source wants it, and the next run completes the rest.
Deletions only happen after the source was read to the end, so a source that breaks off mid-stream
never deletes anything. Re-running with the same source changes nothing.

Target columns the source does not have are left alone (another system may own them). The table (and on
PostgreSQL its schema) is created from the source's types when missing; on SQLite the schema part of
`schema.table` is ignored.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

ROW_HASH = "_row_hash"
_SUPPORTED_DIALECTS = ("postgresql", "sqlite")


class ReverseEtlError(Exception):
    """The sync cannot run as asked (bad source rows, incompatible target table).

    Raised before the first write when the problem is visible up front (target table, first batch);
    a bad row further down stops the sync with the batches before it committed, like any other failure.
    """


@dataclass(frozen=True)
class SyncStats:
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0

    @property
    def changed(self) -> int:
        return self.inserted + self.updated + self.deleted


def row_hash(row: Mapping[str, Any]) -> str:
    """sha256 of the row as canonical JSON: sorted column names, values in a type-stable text form."""
    canonical = json.dumps(
        {name: _canonical(value) for name, value in row.items()},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def sync_rows(
    target: str | Engine,
    table: str,
    rows: Iterable[Mapping[str, Any]] | pa.Table,
    key: str,
    *,
    batch_size: int = 1000,
    allow_empty_source: bool = False,
) -> SyncStats:
    """Make `table` hold exactly `rows` (by `key`); returns what changed.

    `target` is a SQLAlchemy URL or Engine (SQLite or PostgreSQL); `table` is `name` or `schema.name`.
    An empty source would delete every target row; that is refused unless `allow_empty_source`.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    if key == ROW_HASH:
        raise ValueError(f"{ROW_HASH} is the sync state column, not a key")
    engine = _engine(target) if isinstance(target, str) else target
    try:
        return _sync(engine, table, rows, key, batch_size, allow_empty_source)
    finally:
        if isinstance(target, str):
            engine.dispose()


# -- the sync ------------------------------------------------------------------------------------------


def _sync(
    engine: Engine,
    table_name: str,
    rows: Iterable[Mapping[str, Any]] | pa.Table,
    key: str,
    batch_size: int,
    allow_empty_source: bool,
) -> SyncStats:
    dialect = engine.dialect.name
    if dialect not in _SUPPORTED_DIALECTS:
        raise ReverseEtlError(f"reverse ETL supports {_SUPPORTED_DIALECTS}, not {dialect}")
    schema, name = _split(table_name, dialect)

    arrow_schema = rows.schema if isinstance(rows, pa.Table) else None
    source = _source_rows(rows, batch_size)
    first_batch = list(islice(source, batch_size))
    columns = list(first_batch[0]) if first_batch else list(arrow_schema.names if arrow_schema else [])
    if first_batch and key not in columns:
        raise ReverseEtlError(f"key column {key!r} is not in the source columns {columns}")
    if ROW_HASH in columns:
        raise ReverseEtlError(f"the source must not have a {ROW_HASH} column")

    target = _target_table(engine, schema, name, key, columns, first_batch, arrow_schema)
    if target is None:  # no table and nothing to put in it
        return SyncStats()

    with engine.connect() as conn:
        state: dict[Any, str] = {k: h for k, h in conn.execute(sa.select(target.c[key], target.c[ROW_HASH])).tuples()}
    if not first_batch and state and not allow_empty_source:
        raise ReverseEtlError(
            f"the source is empty and {table_name} has {len(state)} rows: refusing to delete them all "
            "(pass allow_empty_source=True if that is intended)"
        )

    upsert = _upsert_statement(target, key, columns, dialect)
    inserted = updated = unchanged = 0
    seen: set[Any] = set()
    pending: list[dict[str, Any]] = []
    pending_new = 0
    key_type: type | None = type(next(iter(state))) if state else None

    def flush() -> None:
        nonlocal inserted, updated, pending, pending_new
        if not pending:
            return
        with engine.begin() as conn:
            conn.execute(upsert, pending)
        inserted += pending_new
        updated += len(pending) - pending_new
        pending, pending_new = [], 0

    column_set = set(columns)
    for position, row in enumerate(_chain(first_batch, source), start=1):
        if set(row) != column_set:
            raise ReverseEtlError(f"source row {position} has columns {sorted(row)}, expected {sorted(columns)}")
        k = row[key]
        if k is None:
            raise ReverseEtlError(f"source row {position} has no value for key {key!r}")
        if key_type is not None and type(k) is not key_type:
            raise ReverseEtlError(
                f"source key {key!r} values are {type(k).__name__} but the target's are {key_type.__name__}"
            )
        if k in seen:
            raise ReverseEtlError(f"source key {key!r} = {k!r} appears more than once (row {position})")
        seen.add(k)
        digest = row_hash({c: row[c] for c in columns})
        previous = state.get(k)
        if previous == digest:
            unchanged += 1
            continue
        pending.append({**{c: row[c] for c in columns}, ROW_HASH: digest})
        pending_new += previous is None
        if len(pending) >= batch_size:
            flush()
    flush()

    gone = [k for k in state if k not in seen]
    for start in range(0, len(gone), batch_size):
        chunk = gone[start : start + batch_size]
        with engine.begin() as conn:
            conn.execute(sa.delete(target).where(target.c[key].in_(chunk)))
    return SyncStats(inserted=inserted, updated=updated, deleted=len(gone), unchanged=unchanged)


def _upsert_statement(target: sa.Table, key: str, columns: list[str], dialect: str) -> Any:
    insert = postgresql.insert(target) if dialect == "postgresql" else sqlite.insert(target)
    updates = {c: insert.excluded[c] for c in [*columns, ROW_HASH] if c != key}
    return insert.on_conflict_do_update(index_elements=[target.c[key]], set_=updates)


# -- target table ----------------------------------------------------------------------------------------


def _target_table(
    engine: Engine,
    schema: str | None,
    name: str,
    key: str,
    columns: list[str],
    sample: list[dict[str, Any]],
    arrow_schema: pa.Schema | None,
) -> sa.Table | None:
    inspector = sa.inspect(engine)
    if inspector.has_table(name, schema=schema):
        table = sa.Table(name, sa.MetaData(), schema=schema, autoload_with=engine)
        _check_existing(inspector, table, schema, key, columns)
        return table
    if not columns or (not sample and arrow_schema is None):
        return None
    if key not in columns:
        raise ReverseEtlError(f"key column {key!r} is not in the source columns {columns}")
    types = _column_types(columns, sample, arrow_schema)
    table = sa.Table(
        name,
        sa.MetaData(),
        *[sa.Column(c, types[c], primary_key=(c == key), nullable=(c != key)) for c in columns],
        sa.Column(ROW_HASH, sa.String(64), nullable=False),
        schema=schema,
    )
    with engine.begin() as conn:
        if schema is not None:
            conn.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
        table.create(conn, checkfirst=True)
    return table


def _check_existing(inspector: sa.Inspector, table: sa.Table, schema: str | None, key: str, columns: list[str]) -> None:
    where = f"{schema + '.' if schema else ''}{table.name}"
    missing = [c for c in [*columns, ROW_HASH] if c not in table.c]
    if missing:
        raise ReverseEtlError(f"target table {where} lacks column(s) {missing}")
    if key not in table.c:
        raise ReverseEtlError(f"target table {where} has no key column {key!r}")
    unique_sets = [tuple(inspector.get_pk_constraint(table.name, schema=schema).get("constrained_columns") or ())]
    unique_sets += [tuple(u["column_names"]) for u in inspector.get_unique_constraints(table.name, schema=schema)]
    unique_sets += [
        tuple(i["column_names"]) for i in inspector.get_indexes(table.name, schema=schema) if i.get("unique")
    ]
    if (key,) not in unique_sets:
        raise ReverseEtlError(f"target table {where} needs a primary key or unique constraint on {key!r} for upserts")


def _column_types(
    columns: list[str], sample: list[dict[str, Any]], arrow_schema: pa.Schema | None
) -> dict[str, sa.types.TypeEngine]:
    if arrow_schema is not None:
        return {c: _arrow_sql_type(c, arrow_schema.field(c).type) for c in columns}
    types: dict[str, sa.types.TypeEngine] = {}
    for c in columns:
        value = next((r[c] for r in sample if r.get(c) is not None), None)
        types[c] = _python_sql_type(c, value)
    return types


def _arrow_sql_type(name: str, t: pa.DataType) -> sa.types.TypeEngine:
    if pa.types.is_boolean(t):
        return sa.Boolean()
    if pa.types.is_integer(t):
        return sa.BigInteger()
    if pa.types.is_floating(t):
        return sa.Double()
    if pa.types.is_decimal(t):
        return sa.Numeric(t.precision, t.scale)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
        return sa.Text()
    if pa.types.is_date(t):
        return sa.Date()
    if pa.types.is_timestamp(t):
        return sa.DateTime(timezone=t.tz is not None)
    raise ReverseEtlError(f"column {name!r} has type {t}, which reverse ETL does not map to SQL")


def _python_sql_type(name: str, value: Any) -> sa.types.TypeEngine:
    if value is None or isinstance(value, str):
        return sa.Text()
    if isinstance(value, bool):
        return sa.Boolean()
    if isinstance(value, int):
        return sa.BigInteger()
    if isinstance(value, float):
        return sa.Double()
    if isinstance(value, Decimal):
        return sa.Numeric()
    if isinstance(value, datetime):
        return sa.DateTime(timezone=value.tzinfo is not None)
    if isinstance(value, date):
        return sa.Date()
    raise ReverseEtlError(f"column {name!r} holds {type(value).__name__}, which reverse ETL does not map to SQL")


# -- helpers ---------------------------------------------------------------------------------------------


def _engine(url: str) -> Engine:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return sa.create_engine(url)


def _split(table: str, dialect: str) -> tuple[str | None, str]:
    parts = table.split(".")
    if len(parts) == 1 and parts[0]:
        return None, parts[0]
    if len(parts) == 2 and all(parts):
        return (parts[0] if dialect == "postgresql" else None), parts[1]
    raise ReverseEtlError(f"table must be 'name' or 'schema.name', got {table!r}")


def _source_rows(rows: Iterable[Mapping[str, Any]] | pa.Table, batch_size: int) -> Iterator[dict[str, Any]]:
    if isinstance(rows, pa.Table):
        for batch in rows.to_batches(max_chunksize=batch_size):
            yield from batch.to_pylist()
        return
    for row in rows:
        yield dict(row)


def _chain(first: list[dict[str, Any]], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield from first
    yield from rest


def _canonical(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return repr(value)
        return value
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value.is_finite() else str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return str(value)
