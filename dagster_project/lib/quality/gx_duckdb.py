"""Run Great Expectations' SQL execution engine on an open DuckDB connection.

GX Core 1.24.1 cannot compute a single metric through duckdb-engine 0.17 out of the box: every metric fails
with `MetricResolutionError: list index out of range` (GX #11579, duckdb_engine #1087).
`SqlAlchemyExecutionEngine.execute_query()` returns its result after the `with self.get_connection()` block
has closed the connection. Closing rolls back SQLAlchemy's transaction, and a duckdb-engine cursor *is* the
DuckDB connection, so the ROLLBACK replaces the pending result set and `fetchall()` returns `[]`.
No pool or engine option avoids it on SQLAlchemy 2.0.

`ensure_patched()` fixes that for the DuckDB dialect only; every other dialect keeps GX's own code path:
1. `execute_query` keeps the connection open until GX has read the rows (GX reads each result once).
2. `execute_query_in_transaction` reads the rows, then commits, then closes.
3. Regex expectations compile to DuckDB's `regexp_matches(col, pattern)` (search semantics, as on
   Postgres); GX has no DuckDB branch and would otherwise raise NotImplementedError.
4. Literals are rendered without doubling backslashes (`duckdb_engine.Dialect._backslash_escapes = False`;
   DuckDB strings are standard-conforming), so a pattern such as `\\d` reaches DuckDB intact.
5. An `UnexpectedRowsExpectation` costs one scan of its query, not two. GX computes two metrics from it,
   the number of rows (`SELECT COUNT(*) ... FROM (query)`) and the first `MAX_RESULT_RECORDS` rows
   (`query` itself), each with a query of its own. On DuckDB the count query instead runs
   `WITH q AS MATERIALIZED (query) SELECT (SELECT count(*) FROM q), * FROM q LIMIT MAX_RESULT_RECORDS`,
   which answers both, and the rows are kept on the engine until GX asks for them (exactly once;
   `forget_shared_results` drops leftovers before each validation). When the query returns more rows than
   that, a request for all of them runs the query again. Not `count(*) OVER ()`: DuckDB 1.5's parallel
   window operator fails now and then on it ("INTERNAL Error: Attempted to access index 0 within vector of
   size 0", in 11 of 1,500 runs of an exists_in gate's query over two Delta tables), and that invalidates
   the database.
6. Column metadata (`table.column_types`, which `table.columns` derives from) is read with one query on
   `duckdb_columns()` instead of duckdb-engine's Postgres-style reflection (several `pg_catalog` queries,
   ~0.05-0.1 s per validation). Rows go through SQLAlchemy's own Postgres column decoding, so names, types
   and nullability come out as before; any type that decoding does not know takes GX's own path.
7. Inside `configurations_built_once()`, an expectation's `configuration` is built once. GX rebuilds it
   from the expectation's fields at every read (a pydantic `dict()` and a new `ExpectationConfiguration`),
   about a hundred reads per expectation per validation while it builds its metric graph: a fifth of a
   gate's time on a small partition. GX reads it from expectations it does not change while it validates.
8. A metric's id (`IDDict.to_id`, the MD5 of its kwargs as sorted JSON, computed for each of the thousand
   metric configurations a gate builds) serializes plain kwargs with `json.dumps` directly; GX first walks
   them through `convert_to_json_serializable`, which gives the same JSON for plain values and is kept for
   any other (a set, a Decimal, a NumPy scalar, NaN). A tenth of a gate's time on a small partition.

The patch replaces GX internals, so GX stays pinned (pyproject: `great-expectations==1.24.1`); after an
upgrade run tests/lib/quality/test_gx_runner.py and update `TESTED_GX_VERSION` only if it passes.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import duckdb
import duckdb_engine
import great_expectations as gx
import sqlalchemy as sa
from great_expectations.constants import MAX_RESULT_RECORDS
from great_expectations.core.id_dict import IDDict
from great_expectations.data_context import AbstractDataContext
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.datasource.fluent import SQLDatasource
from great_expectations.execution_engine import SqlAlchemyExecutionEngine
from great_expectations.expectations.expectation import Expectation
from sqlalchemy.engine.result import result_tuple
from sqlalchemy.pool import StaticPool

TESTED_GX_VERSION = "1.24.1"

# Modules that bound `get_dialect_regex_expression` by name at import; each gets the DuckDB-aware one.
_REGEX_MODULES = (
    "great_expectations.expectations.metrics.util",
    "great_expectations.expectations.metrics.column_map_metrics.column_values_match_regex",
    "great_expectations.expectations.metrics.column_map_metrics.column_values_not_match_regex",
    "great_expectations.expectations.metrics.column_map_metrics.column_values_match_regex_list",
    "great_expectations.expectations.metrics.column_map_metrics.column_values_not_match_regex_list",
)
_READ_METHODS = frozenset(
    {
        "fetchall",
        "fetchmany",
        "fetchone",
        "scalar",
        "scalars",
        "first",
        "all",
        "one",
        "one_or_none",
        "scalar_one",
        "scalar_one_or_none",
    }
)
_MARK = "_medallion_duckdb_patch"
# The statement GX's `unexpected_rows_query.row_count` metric runs (query_metrics/query_row_count).
_ROW_COUNT_QUERY = re.compile(
    r"\ASELECT COUNT\(\*\) as unexpected_row_count FROM \((?P<query>.*)\) AS substituted_batch_subquery\Z",
    re.DOTALL,
)
_SHARED = "_duckdb_shared_rows"  # engine attribute: query text -> _SharedRows
_COLUMN_TYPES_MODULE = "great_expectations.expectations.metrics.table_metrics.table_column_types"
# The rows SQLAlchemy's Postgres dialect decodes into column metadata (`PGDialect._get_columns_info`), read
# from DuckDB's own catalog; the type modifier is computed as DuckDB's `pg_catalog.pg_attribute` does.
_COLUMNS_QUERY = """
SELECT column_name AS name,
  pg_catalog.format_type(
    data_type_id,
    CASE WHEN data_type ILIKE '%decimal%' THEN numeric_precision * 1000 + numeric_scale ELSE -1 END
  ) AS format_type,
  column_default AS "default", NOT is_nullable AS not_null, table_name, comment,
  '' AS generated, NULL AS identity_options, NULL AS collation
FROM duckdb_columns()
WHERE table_name = $table
  AND CASE WHEN $schema IS NULL
    THEN (database_name = current_database() AND schema_name = current_schema()) OR database_name = 'temp'
    ELSE schema_name = $schema AND database_name IN (current_database(), 'temp')
  END
QUALIFY table_oid = first_value(table_oid) OVER (ORDER BY database_name = 'temp' DESC, table_oid)
ORDER BY column_index
"""
_lock = threading.Lock()
# Patch item 7: id(expectation) -> (expectation, its configuration), within `configurations_built_once()`.
_configurations: ContextVar[dict[int, tuple[Any, Any]] | None] = ContextVar("gx_configurations", default=None)


def _is_duckdb(engine: SqlAlchemyExecutionEngine) -> bool:
    return isinstance(engine.engine.dialect, duckdb_engine.Dialect)


class _ReadOnceResult:
    """A query result that owns its connection and closes it right after the rows have been read."""

    def __init__(self, connection: sa.Connection, result: sa.CursorResult) -> None:
        self._connection = connection
        self._result = result

    def close(self) -> None:
        if not self._connection.closed:
            self._connection.close()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._result, name)
        if name not in _READ_METHODS:
            return attr

        def read(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            finally:
                self.close()

        return read

    def __iter__(self):
        return iter(self.fetchall())

    def __del__(self) -> None:
        # A result nobody read still has to hand its connection back, or the next query on the
        # (single, static) DuckDB connection would start inside this one's transaction.
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown; nothing left to release
            pass


class _SharedRows:
    """The outcome of one scan of an unexpected-rows query: its row count and first rows."""

    def __init__(self, keys: list[str], rows: list[tuple], count: int) -> None:
        self.keys = keys
        self.rows = rows
        self.count = count

    @property
    def complete(self) -> bool:
        return len(self.rows) == self.count


class _ListResult:
    """A read-once stand-in for a query result whose rows are already known.

    `run_query` produces the real result, for a caller wanting more rows than are known.
    """

    returns_rows = True

    def __init__(self, keys: list[str], rows: list[tuple], complete: bool, run_query: Callable[[], Any]) -> None:
        self._make_row = result_tuple(keys)
        self._keys = keys
        self._rows = rows
        self._complete = complete
        self._run_query = run_query

    def keys(self) -> list[str]:
        return list(self._keys)

    def _take(self, n: int | None) -> list:
        if n is None or n > len(self._rows):
            if not self._complete:
                rows = self._run_query().fetchall()
                self._rows, self._complete = [tuple(r) for r in rows], True
            n = len(self._rows)
        taken, self._rows = self._rows[:n], self._rows[n:]
        return [self._make_row(r) for r in taken]

    def fetchall(self) -> list:
        return self._take(None)

    def fetchmany(self, size: int | None = None) -> list:
        return self._take(1 if size is None else size)

    def fetchone(self) -> Any:
        rows = self._take(1)
        return rows[0] if rows else None

    def scalar(self) -> Any:
        row = self.fetchone()
        return None if row is None else row[0]

    def __iter__(self):
        return iter(self.fetchall())

    def close(self) -> None:
        self._rows = []


def forget_shared_results(engine: SqlAlchemyExecutionEngine) -> None:
    """Drop the unexpected-rows results the engine holds (patch item 5); call before each validation."""
    getattr(engine, _SHARED, {}).clear()


def _query_text(query: Any) -> str | None:
    return query.text if isinstance(query, sa.TextClause) and not query._bindparams else None


def count_and_first_rows(query: str) -> str:
    """One query for the number of rows `query` returns (first column, `unexpected_row_count`) and its first
    `MAX_RESULT_RECORDS` rows: `query` runs once."""
    return (
        f"WITH substituted_batch_subquery AS MATERIALIZED ({query}) "
        "SELECT (SELECT count(*) FROM substituted_batch_subquery) AS unexpected_row_count, * "
        f"FROM substituted_batch_subquery LIMIT {int(MAX_RESULT_RECORDS)}"
    )


def _patched_execute_query(original: Callable) -> Callable:
    def run(self: SqlAlchemyExecutionEngine, query: Any) -> Any:
        previous = getattr(self, "_duckdb_open_result", None)
        if previous is not None:
            previous.close()
        connection = self.engine.connect()
        try:
            result = self._execute_query_with_recovery(connection, query)
        except BaseException:
            connection.close()
            raise
        if not result.returns_rows:
            connection.close()
            return result
        self._duckdb_open_result = _ReadOnceResult(connection, result)
        return self._duckdb_open_result

    def execute_query(self: SqlAlchemyExecutionEngine, query: Any) -> Any:
        if not _is_duckdb(self):
            return original(self, query)
        text = _query_text(query)
        if text is None:
            return run(self, query)
        shared: dict[str, _SharedRows] = self.__dict__.setdefault(_SHARED, {})
        known = shared.pop(text, None)
        if known is not None:  # the rows of a query whose count was asked for first
            return _ListResult(known.keys, known.rows, known.complete, lambda: run(self, query))
        match = _ROW_COUNT_QUERY.match(text)
        if match is None:
            return run(self, query)
        inner = match.group("query")
        result = run(self, sa.text(count_and_first_rows(inner)))
        keys = list(result.keys())[1:]
        rows = [tuple(r) for r in result.fetchall()]
        count = int(rows[0][0]) if rows else 0
        shared[inner] = _SharedRows(keys, [r[1:] for r in rows], count)
        return _ListResult(["unexpected_row_count"], [(count,)], True, lambda: run(self, query))

    setattr(execute_query, _MARK, True)
    execute_query.__doc__ = original.__doc__
    return execute_query


def _patched_execute_query_in_transaction(original: Callable) -> Callable:
    def execute_query_in_transaction(self: SqlAlchemyExecutionEngine, query: Any) -> Any:
        if not _is_duckdb(self):
            return original(self, query)
        with self.engine.connect() as connection:
            result = self._execute_query_with_recovery(connection, query)
            buffered = result.freeze()() if result.returns_rows else result
            if connection.in_transaction():
                connection.commit()
        return buffered

    setattr(execute_query_in_transaction, _MARK, True)
    execute_query_in_transaction.__doc__ = original.__doc__
    return execute_query_in_transaction


def _patched_regex_expression(original: Callable) -> Callable:
    def get_dialect_regex_expression(column: Any, regex: str, dialect: Any, positive: bool = True) -> Any:
        is_duckdb = isinstance(dialect, duckdb_engine.Dialect) or (
            isinstance(dialect, type) and issubclass(dialect, duckdb_engine.Dialect)
        )
        if not is_duckdb:
            return original(column, regex, dialect, positive)
        matches = sa.func.regexp_matches(column, sa.literal(regex))
        return matches if positive else sa.not_(matches)

    setattr(get_dialect_regex_expression, _MARK, True)
    return get_dialect_regex_expression


def _patched_column_metadata(original: Callable, util: Any) -> Callable:
    def get_sqlalchemy_column_metadata(
        execution_engine: SqlAlchemyExecutionEngine, table_selectable: Any, schema_name: str | None = None
    ) -> Any:
        if not _is_duckdb(execution_engine) or not isinstance(table_selectable, str):
            return original(execution_engine, table_selectable, schema_name)
        dialect = execution_engine.engine.dialect
        with execution_engine.engine.connect() as connection:
            rows = connection.exec_driver_sql(
                _COLUMNS_QUERY, {"table": str(table_selectable), "schema": schema_name}
            ).fetchall()
            if connection.in_transaction():
                connection.commit()
        rows = [r._asdict() for r in rows]  # one relation: a temporary one hides the one in main
        known = dialect.ischema_names
        if not rows or any(r["format_type"].split("(")[0] not in known or r["format_type"] == "enum" for r in rows):
            return original(execution_engine, table_selectable, schema_name)
        columns = dialect._get_columns_info(rows, {}, {}, schema_name)
        # DuckDB reports no primary keys through duckdb-engine (its constraint query fails), nor here.
        return util._build_column_metadata_result(next(iter(columns.values())), set(), execution_engine)

    setattr(get_sqlalchemy_column_metadata, _MARK, True)
    return get_sqlalchemy_column_metadata


def _patched_configuration(original: Callable) -> property:
    def configuration(self: Expectation) -> Any:
        built = _configurations.get()
        if built is None:
            return original(self)
        known = built.get(id(self))
        if known is None or known[0] is not self:
            known = built[id(self)] = (self, original(self))
        return known[1]

    setattr(configuration, _MARK, True)
    configuration.__doc__ = original.__doc__
    return property(configuration)


def _patched_to_id(original: Callable) -> Callable:
    def to_id(self: IDDict, id_keys: Any = None, id_ignore_keys: Any = None) -> Any:
        # Read once each: either may be an iterator, and GX's own `to_id` may need them after.
        id_keys = None if id_keys is None else list(id_keys)
        id_ignore_keys = None if id_ignore_keys is None else list(id_ignore_keys)
        keys = set(self.keys() if id_keys is None else id_keys)
        keys -= set(self._id_ignore_keys if id_ignore_keys is None else id_ignore_keys)
        if len(keys) < 2:
            return original(self, id_keys, id_ignore_keys)
        try:
            text = json.dumps({k: self[k] for k in keys}, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError):  # not plain JSON: GX's own conversion
            return original(self, id_keys, id_ignore_keys)
        return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()

    setattr(to_id, _MARK, True)
    to_id.__doc__ = original.__doc__
    return to_id


@contextmanager
def configurations_built_once() -> Iterator[None]:
    """Within it, each expectation's `configuration` is built once (patch item 7): wrap one validation."""
    ensure_patched()
    token = _configurations.set({})
    try:
        yield
    finally:
        _configurations.reset(token)


def ensure_patched() -> None:
    """Apply the DuckDB fixes to GX once per process; later calls do nothing."""
    if getattr(SqlAlchemyExecutionEngine.execute_query, _MARK, False):
        return
    with _lock:
        if getattr(SqlAlchemyExecutionEngine.execute_query, _MARK, False):
            return
        if gx.__version__ != TESTED_GX_VERSION:
            raise RuntimeError(
                f"gx_duckdb patches GX internals tested on great-expectations {TESTED_GX_VERSION}, "
                f"found {gx.__version__}; re-run tests/lib/quality/test_gx_runner.py before raising the pin"
            )
        modules = [importlib.import_module(name) for name in _REGEX_MODULES]
        original_regex = modules[0].get_dialect_regex_expression
        regex = _patched_regex_expression(original_regex)
        for module in modules:
            if module.get_dialect_regex_expression is not original_regex:
                raise RuntimeError(f"{module.__name__} no longer uses GX's get_dialect_regex_expression")
            module.get_dialect_regex_expression = regex
        duckdb_engine.Dialect._backslash_escapes = False
        column_types = importlib.import_module(_COLUMN_TYPES_MODULE)
        if column_types.get_sqlalchemy_column_metadata is not modules[0].get_sqlalchemy_column_metadata:
            raise RuntimeError(f"{_COLUMN_TYPES_MODULE} no longer uses GX's get_sqlalchemy_column_metadata")
        column_types.get_sqlalchemy_column_metadata = _patched_column_metadata(
            column_types.get_sqlalchemy_column_metadata, modules[0]
        )
        SqlAlchemyExecutionEngine.execute_query_in_transaction = _patched_execute_query_in_transaction(
            SqlAlchemyExecutionEngine.execute_query_in_transaction
        )
        Expectation.configuration = _patched_configuration(Expectation.configuration.fget)  # ty: ignore[invalid-assignment]
        IDDict.to_id = _patched_to_id(IDDict.to_id)
        # Last: its mark is what tells later calls the whole patch is in place.
        SqlAlchemyExecutionEngine.execute_query = _patched_execute_query(SqlAlchemyExecutionEngine.execute_query)


class _BorrowedConnection(duckdb_engine.ConnectionWrapper):
    """duckdb-engine's DBAPI wrapper around a connection the caller owns: closing it leaves the connection open."""

    def close(self) -> None:
        self.closed = True


def add_datasource(context: AbstractDataContext, name: str, con: duckdb.DuckDBPyConnection) -> SQLDatasource:
    """A GX SQL datasource whose only connection is `con`, so GX sees the tables and views registered on it.

    `con` stays open when GX lets go of it. It must not be in an open transaction while GX runs: every GX
    query runs in a transaction of its own on `con`.
    """
    ensure_patched()
    return context.data_sources.add_sql(
        name=name,
        connection_string="duckdb://",
        create_temp_table=False,  # temp tables would copy the batch; DuckDB scans it fast enough in place
        kwargs={"creator": lambda: _BorrowedConnection(con), "poolclass": StaticPool},
    )


def ephemeral_context() -> AbstractDataContext:
    """An in-memory GX context with no progress bars and no usage statistics."""
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)
