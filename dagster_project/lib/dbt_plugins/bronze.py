"""dbt-duckdb plugin that reads a bronze Delta table, or an empty table with its schema before the first write.

dbt-duckdb's own `delta` plugin fails when the table does not exist yet, and then every model built in the
same `dbt build` fails with it: one feed that has not delivered anything yet (no payout file, no webhook)
would stop silver and gold for all the others. A bronze table that does not exist yet has no rows, and its
columns are known from the declarations in `lib/`, so this plugin returns exactly that.

Source configuration (`config.meta` of the source table):

    plugin: bronze
    materialization: table
    bronze_table: <bronze table name, e.g. payment_events>
    delta_table_path: <path of the Delta table>

The plugin also creates the warehouse schema the sources load into (`schema` in its profile config,
`bronze` by default) when dbt opens the warehouse; see `configure_connection`.
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa
from dbt.adapters.duckdb.plugins import BasePlugin
from dbt.adapters.duckdb.utils import SourceConfig
from deltalake import DeltaTable
from duckdb import DuckDBPyConnection

from dagster_project.lib.bronze.contract import bronze_schema
from dagster_project.lib.sources.registry import SOURCES


def bronze_schemas() -> dict[str, pa.Schema]:
    """The Arrow schema of every bronze table, by table name, from the source registry."""
    return {name: bronze_schema(spec) for name, spec in SOURCES.items()}


class Plugin(BasePlugin):
    def initialize(self, plugin_config: dict[str, Any]) -> None:
        self._schemas = bronze_schemas()
        self._warehouse_schema = str(plugin_config.get("schema") or "bronze")
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", self._warehouse_schema):
            raise ValueError(f"bronze plugin: schema {self._warehouse_schema!r} is not a plain identifier")

    def configure_connection(self, conn: DuckDBPyConnection) -> None:
        # dbt loads each source on the thread of the first model that reads it, and each load starts with
        # CREATE SCHEMA IF NOT EXISTS: two first loads at once conflict in DuckDB's catalog
        # ("write-write conflict on create"). Created once here, before any thread starts, it never races.
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._warehouse_schema}")

    def load(self, source_config: SourceConfig) -> Any:
        path = source_config.get("delta_table_path")
        table = source_config.get("bronze_table")
        if not path or not table:
            raise ValueError(f"source {source_config.name}: the bronze plugin needs delta_table_path and bronze_table")
        if table not in self._schemas:
            raise ValueError(f"source {source_config.name}: unknown bronze table {table!r}")
        if DeltaTable.is_deltatable(str(path)):
            return DeltaTable(str(path)).to_pyarrow_dataset()
        return self._schemas[table].empty_table()

    def default_materialization(self) -> str:
        return "table"
