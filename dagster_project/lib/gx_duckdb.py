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

The patch replaces GX internals, so GX stays pinned (pyproject: `great-expectations==1.24.1`); after an
upgrade run tests/lib/test_gx_runner.py and update `TESTED_GX_VERSION` only if it passes.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

import duckdb
import duckdb_engine
import great_expectations as gx
import sqlalchemy as sa
from great_expectations.data_context import AbstractDataContext
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.datasource.fluent import SQLDatasource
from great_expectations.execution_engine import SqlAlchemyExecutionEngine
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
_lock = threading.Lock()


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


def _patched_execute_query(original: Callable) -> Callable:
    def execute_query(self: SqlAlchemyExecutionEngine, query: Any) -> Any:
        if not _is_duckdb(self):
            return original(self, query)
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
                f"found {gx.__version__}; re-run tests/lib/test_gx_runner.py before raising the pin"
            )
        modules = [importlib.import_module(name) for name in _REGEX_MODULES]
        original_regex = modules[0].get_dialect_regex_expression
        regex = _patched_regex_expression(original_regex)
        for module in modules:
            if module.get_dialect_regex_expression is not original_regex:
                raise RuntimeError(f"{module.__name__} no longer uses GX's get_dialect_regex_expression")
            module.get_dialect_regex_expression = regex
        duckdb_engine.Dialect._backslash_escapes = False
        SqlAlchemyExecutionEngine.execute_query_in_transaction = _patched_execute_query_in_transaction(
            SqlAlchemyExecutionEngine.execute_query_in_transaction
        )
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
