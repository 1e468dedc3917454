"""The lake plugin's merge commits on the version of the table its model read: a commit landing in between is a
conflict (the step's retry then runs the model again from fresh inputs), not a change the merge overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from dbt.adapters.duckdb.utils import TargetConfig
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from dagster_project.lib.dbt_plugins.lake import Plugin
from dagster_project.lib.lake import LOST_COMMIT_RACE


def _target(relation: str | None, **config: Any) -> TargetConfig:
    return TargetConfig(relation=relation, column_list=[], config={"schema": "gold", "identifier": "t", **config})


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Plugin, duckdb.DuckDBPyConnection, str]:
    uri = str(tmp_path / "lake" / "gold" / "t")
    write_deltalake(uri, pa.table({"k": [1, 2], "v": ["a", "b"]}))
    monkeypatch.setenv("MEDALLION_LAKE_ROOT", str(tmp_path / "lake"))  # as run by hand: no run file
    plugin = Plugin(name="lake", plugin_config={"root_env_var": "MEDALLION_LAKE_ROOT"})
    con = duckdb.connect()
    plugin.configure_connection(con)
    return plugin, con, uri


def _rows(uri: str) -> list[tuple[int, str]]:
    return sorted((r["k"], r["v"]) for r in DeltaTable(uri).to_pyarrow_table().to_pylist())


def test_a_merge_fails_when_its_table_changed_after_the_model_read_it(plugin) -> None:
    lake, con, uri = plugin
    lake.store(_target(None, mode="pin"))
    # Another run commits to the table before this model reads it: the model still reads the pinned version.
    write_deltalake(uri, pa.table({"k": [3], "v": ["c"]}), mode="append")
    con.execute("create table scratch as select k, v || '!' as v, false as _lake_delete from gold.t")
    assert con.execute("select k from scratch order by k").fetchall() == [(1,), (2,)]

    with pytest.raises(CommitFailedError, match=f"^{LOST_COMMIT_RACE}: another run committed to gold.t first"):
        lake.store(_target("scratch", mode="merge", unique_key=["k"]))

    assert _rows(uri) == [(1, "a"), (2, "b"), (3, "c")]  # the other run's commit, and nothing of the stale merge
    # The view reads the table's latest version again.
    assert con.execute("select count(*) from gold.t").fetchone() == (3,)


def test_a_merge_commits_when_nothing_landed_since_the_model_read_its_table(plugin) -> None:
    lake, con, uri = plugin
    lake.store(_target(None, mode="pin"))
    con.execute("create table scratch as select k, v || '!' as v, false as _lake_delete from gold.t where k = 2")

    lake.store(_target("scratch", mode="merge", unique_key=["k"]))

    assert _rows(uri) == [(1, "a"), (2, "b!")]
