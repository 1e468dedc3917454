"""The first business date decides every daily layer's partitions, read when the code location loads."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dagster_project import settings
from dagster_project.lib.business_dates import default_first_business_date

# Loads the definitions and prints, for every partitioned asset and asset check, its partitions' first and
# last keys, and the set of partitions definitions used (one, shared by every layer).
PROBE = """
import json
from dagster_project.definitions import defs
from dagster_project.defs.common.partitions import daily_partitions

graph = defs().resolve_asset_graph()
seen, firsts = set(), {}
for key in graph.get_all_asset_keys():
    node = graph.get(key)
    if node.partitions_def is not None:
        seen.add(repr(node.partitions_def))
        firsts[key.to_user_string()] = node.partitions_def.get_first_partition_key()
for check_key in graph.asset_check_keys:
    partitions_def = graph.get_check_spec(check_key).partitions_def
    if partitions_def is not None:
        seen.add(repr(partitions_def))
        firsts[check_key.to_user_string()] = partitions_def.get_first_partition_key()
print(json.dumps({"firsts": firsts, "definitions": len(seen), "start": daily_partitions.start.date().isoformat()}))
"""


def _load(tmp_path: Path, first: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != settings.FIRST_BUSINESS_DATE}
    env |= {"MEDALLION_DATA_DIR": str(tmp_path / "data"), "DAGSTER_HOME": str(tmp_path / "dagster")}
    if first is not None:
        env[settings.FIRST_BUSINESS_DATE] = first
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("first", ["2024-06-01", "2026-10-01"])
def test_the_first_business_date_is_the_first_partition_of_every_daily_layer(
    tmp_path: Path, parsed_manifest: Path, first: str
):
    loaded = _load(tmp_path, first)
    firsts = loaded["firsts"]
    layers = {key.split("/")[0] for key in firsts}
    assert {"landing", "bronze", "quarantine", "silver"} <= layers
    assert set(firsts.values()) == {first}
    assert loaded["start"] == first and loaded["definitions"] == 1


def test_unset_the_partitions_start_three_whole_months_back(tmp_path: Path, parsed_manifest: Path):
    def default() -> str:
        return default_first_business_date(dt.datetime.now(dt.UTC).date()).isoformat()

    before = default()
    loaded = _load(tmp_path, None)
    # the child may have loaded on the first of a month, after this process looked at the clock
    assert len(set(loaded["firsts"].values())) == 1 and loaded["start"] in {before, default()}
