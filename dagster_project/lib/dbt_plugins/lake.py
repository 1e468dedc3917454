"""dbt-duckdb plugin: the lake's Delta tables are the warehouse; DuckDB is only the compute of one invocation.

dbt runs on an in-memory DuckDB (profiles.yml `path: ":memory:"`), so there is no database file to share,
lock or leak raw PII into. When dbt opens it, this plugin

- loads DuckDB's delta extension (and on an object store httpfs, aws and azure) and the lake's credentials
  (`Lake.configure_duckdb`),
- reads which lake, and for a daily run which business dates, from the run file Dagster writes in the
  command's target folder (run_file.py), and makes the dates the SQL macro `medallion_partition_window()`;
- creates a view `<layer>.<table>` over every Delta table of the lake (`delta_scan`, which prunes a scan to
  the partitions a query filters on, so a daily run reads its days, not all of bronze), and an empty typed
  table for a bronze table that does not exist yet (a feed with no delivery so far): sources and `ref()`s
  resolve to the lake and nothing is copied.

The project's `table` and `incremental` materializations (macros/materializations/lake.sql) compute a model
into a scratch table of the in-memory database and call `store` here, which writes it to the model's Delta
table `<lake>/<schema>/<name>` in one commit, then points the model's view at it:

- `overwrite`: the whole table (tables, and an incremental model's first build or full refresh);
- `replace_where`: only the rows matching a predicate (the partition window of a partitioned incremental
  model): `write_deltalake(mode="overwrite", predicate=...)`, so rows that left bronze leave silver too;
- `merge`: rows whose unique key is in the new rows are replaced, the others inserted (`DeltaTable.merge`);
  a new row whose `_lake_delete` column is true is a tombstone: its key is deleted instead. A merged model
  sends one for every key it recomputed to nothing (its records left bronze; macros/merge_deletes.sql), so
  deletions land in the same single commit as its other changes; a merge without that column is refused.
  A model may send only the rows that changed (select_changes_with_deletes); with none, nothing is committed.
  A new row whose `_lake_partial` column is true updates only the model's `partial_update_columns` of its key
  (select_changes_with_ends): a version whose end moved is sent as its key and its end, so the model need not
  read the rest of the row.

Why DuckDB's delta extension (`delta_scan`) reads, and not dbt-duckdb's own `delta` plugin: that plugin hands
DuckDB a pyarrow dataset, which only lives on the cursor that registered it, so a source must be copied into
the database (`materialization: table`) for every model to see it: all of bronze, on every run. A
`delta_scan` view is plain SQL: every cursor and thread sees it, it prunes files by partition and by column
statistics (a filter on business_date read 1 of 28 files), and it reads object stores through DuckDB's own
S3/GCS/Azure support with the lake's credentials. Writes go through deltalake, which the extension cannot do.

A commit that loses to a concurrent writer raises deltalake's `CommitFailedError`, its message starting with
`LOST_COMMIT_RACE`; the Dagster step then runs the models again from fresh inputs (retrying the same rows
could commit a result computed before the other writer's). A merged model computes its rows from its own table,
so before it runs the materialization pins that table (`pin`): its view reads the version current then, and the
merge commits on top of that very version, so a commit that lands between the model's read and its merge is a
conflict too, not a change the merge silently overrides.
"""

from __future__ import annotations

import atexit
import datetime as dt
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from dbt.adapters.duckdb.plugins import BasePlugin
from dbt.adapters.duckdb.utils import TargetConfig
from duckdb import DuckDBPyConnection

from dagster_project import settings
from dagster_project.lib.dbt_plugins.run_file import read_run
from dagster_project.lib.lake import LOST_COMMIT_RACE, Lake

BATCH_ROWS = 128 * 1024
# A new row of a merged model with this column true deletes its key (macros/merge_deletes.sql).
DELETE_MARKER = "_lake_delete"
# A new row of a merged model with this column true sets only the model's `partial_update_columns` of its key.
PARTIAL_MARKER = "_lake_partial"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


def _this_commands_run() -> dict[str, Any] | None:
    """This dbt command's run file (run_file.py), if Dagster wrote one in its target folder."""
    from dbt.flags import get_flags

    flags = get_flags()
    target = Path(getattr(flags, "TARGET_PATH", None) or "target")
    if not target.is_absolute():  # dbt resolves a relative target path in the project
        target = Path(getattr(flags, "PROJECT_DIR", None) or ".") / target
    return read_run(target)


def _window_macro(window: Sequence[str] | None) -> str:
    """`medallion_partition_window()`: a table of one row, the run's first and last business date, or of none."""
    if not window:
        return "SELECT NULL::VARCHAR AS min_date, NULL::VARCHAR AS max_date WHERE false"
    first, last = (dt.date.fromisoformat(day).isoformat() for day in window)  # only dates reach the SQL
    return f"SELECT '{first}' AS min_date, '{last}' AS max_date"


def _bronze_schemas() -> dict[str, pa.Schema]:
    from dagster_project.lib.bronze.contract import bronze_schema
    from dagster_project.lib.sources.registry import SOURCES

    return {name: bronze_schema(spec) for name, spec in SOURCES.items()}


class Plugin(BasePlugin):
    def initialize(self, plugin_config: dict[str, Any]) -> None:
        root_env_var = str(plugin_config.get("root_env_var") or "")
        if not root_env_var:
            raise ValueError("the lake plugin needs `root_env_var` (the variable holding the lake root)")
        run = _this_commands_run()
        # Unset, a path that cannot exist and names the variable: a run fails loudly on it.
        root = run["lake_root"] if run else os.environ.get(root_env_var) or f"/nonexistent/{root_env_var}-is-not-set"
        self._window = run["window"] if run else None
        self._lake = Lake.parse(root, settings.lake_storage_options())
        self._conn: DuckDBPyConnection | None = None
        # (schema, table) -> the DeltaTable a merged model is reading, pinned before it runs (mode `pin`).
        self._pinned: dict[tuple[str, str], Any] = {}

    def configure_connection(self, conn: DuckDBPyConnection) -> None:
        # What does not fit in memory spills to a folder of this process only, removed when it exits; by
        # default an in-memory DuckDB spills to `.tmp` in the working directory (the dbt project), where a
        # killed run would leave raw rows behind.
        spill = tempfile.mkdtemp(prefix="medallion-duckdb-")
        atexit.register(shutil.rmtree, spill, ignore_errors=True)
        conn.execute("SET temp_directory = ?", [spill])
        conn.execute(f"CREATE OR REPLACE MACRO medallion_partition_window() AS TABLE {_window_macro(self._window)}")
        self._lake.attach(conn, empty_bronze=_bronze_schemas())
        self._conn = conn

    def store(self, target_config: TargetConfig) -> None:
        from deltalake import DeltaTable, write_deltalake
        from deltalake.exceptions import CommitFailedError

        assert self._conn is not None, "the lake plugin stores only after dbt opened its connection"
        options = dict(target_config.config)
        schema, table = options["schema"], options["identifier"]
        if not (_IDENTIFIER.match(schema) and _IDENTIFIER.match(table)):
            raise ValueError(f"lake plugin: {schema}.{table} is not a plain identifier")
        uri = self._lake.table(schema, table)
        storage = self._lake.delta_options()
        mode = options.get("mode", "overwrite")
        cursor = self._conn.cursor()
        latest_view = f"CREATE OR REPLACE VIEW {schema}.{table} AS SELECT * FROM {self._lake.duckdb_scan(uri)}"
        pinned = None
        try:
            if mode == "pin":
                self._pin(cursor, schema, table, uri, storage)
                return
            pinned = self._pinned.pop((schema, table), None)
            relation = target_config.relation
            columns = [d[0] for d in cursor.execute(f"SELECT * FROM {relation} LIMIT 0").description]
            has_tombstones = DELETE_MARKER in columns
            partial_columns = list(options.get("partial_update_columns") or [])
            has_partial = PARTIAL_MARKER in columns
            if has_partial and not partial_columns:
                raise ValueError(
                    f"lake plugin: {schema}.{table} sends partial rows ({PARTIAL_MARKER}) but its config names "
                    "no partial_update_columns"
                )
            markers = [m for m in (DELETE_MARKER, PARTIAL_MARKER) if m in columns]
            exists = DeltaTable.is_deltatable(uri, storage_options=storage)
            if mode == "merge" and exists:
                if not has_tombstones:
                    raise ValueError(
                        f"lake plugin: {schema}.{table} is merged on its unique key but does not end with "
                        "select_with_deletes (macros/merge_deletes.sql): a key whose records left bronze "
                        "would stay in it"
                    )
                (changes,) = cursor.execute(f"SELECT count(*) FROM {relation}").fetchone()
                # A model that sends only its changed rows (select_changes_with_deletes) may have none: then
                # there is nothing to commit, and delta-rs takes seconds to merge even an empty source.
                if changes:
                    rows = cursor.execute(f"SELECT * FROM {relation}").to_arrow_reader(BATCH_ROWS)
                    # A tombstone deletes its key, a partial row sets its columns; neither is inserted when its
                    # key matches nothing. The first clause whose predicate holds applies.
                    merger = (
                        (pinned or DeltaTable(uri, storage_options=storage))
                        .merge(
                            source=rows,
                            predicate=" and ".join(f"t.{k} = s.{k}" for k in options["unique_key"]),
                            source_alias="s",
                            target_alias="t",
                        )
                        .when_matched_delete(predicate=f"s.{DELETE_MARKER}")
                    )
                    full = f"not s.{DELETE_MARKER}"
                    if has_partial:
                        merger = merger.when_matched_update(
                            updates={c: f"s.{c}" for c in partial_columns}, predicate=f"s.{PARTIAL_MARKER}"
                        )
                        full += f" and not s.{PARTIAL_MARKER}"
                    merger.when_matched_update_all(except_cols=markers).when_not_matched_insert_all(
                        predicate=full, except_cols=markers
                    ).execute()
            else:
                # Written in full or by partition, a table is what the model selected; tombstones and partial
                # rows (a merged model whose table went missing) have nothing to delete or update there.
                select = (
                    f"SELECT * EXCLUDE ({', '.join(markers)}) FROM {relation} WHERE NOT {' AND NOT '.join(markers)}"
                    if markers
                    else f"SELECT * FROM {relation}"
                )
                rows = cursor.execute(select).to_arrow_reader(BATCH_ROWS)
                if mode == "replace_where" and exists:
                    write_deltalake(
                        uri, rows, mode="overwrite", predicate=options["predicate"], storage_options=storage
                    )
                else:
                    write_deltalake(
                        uri,
                        rows,
                        mode="overwrite",
                        schema_mode="overwrite",
                        partition_by=list(options.get("partition_by") or []) or None,
                        storage_options=storage,
                        description=options.get("description") or None,
                    )
            cursor.execute(latest_view)
            pinned = None
        except CommitFailedError as exc:
            raise CommitFailedError(
                f"{LOST_COMMIT_RACE}: another run committed to {schema}.{table} first ({exc})"
            ) from exc
        finally:
            if pinned is not None:
                # A write that failed leaves the view on the table's latest version too, not on the one it read.
                cursor.execute(latest_view)
            cursor.close()

    def _pin(self, cursor: DuckDBPyConnection, schema: str, table: str, uri: str, storage: dict[str, str]) -> None:
        """Point the model's view at its table's current version, and keep that version for its merge."""
        from deltalake import DeltaTable

        if not DeltaTable.is_deltatable(uri, storage_options=storage):
            return
        delta = DeltaTable(uri, storage_options=storage)
        scan = self._lake.duckdb_scan(uri)
        pinned_scan = f"{scan.removesuffix(')')}, version := {int(delta.version())})"
        cursor.execute(f"CREATE OR REPLACE VIEW {schema}.{table} AS SELECT * FROM {pinned_scan}")
        self._pinned[(schema, table)] = delta
