"""The run file of a dbt command Dagster starts: what the command is about, the lake and the run's business dates.

Dagster writes it in the command's own target folder (`MedallionDbtCliResource.cli`) and the lake plugin reads it
in the dbt process (lake.py). Passed as `--vars` or rendered in the profile, the same values would make dbt parse
the whole project again on every command (about 4 s of CPU): dbt keeps its previous parse only while its vars and
profile stay the same. Run by hand there is no such file: the lake is the variable the profile names, the dates
`--vars`. Nothing heavy is imported here: the definitions load this module.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RUN_FILE = "medallion_run.json"


def write_run(target_path: Path, lake_root: str, window: Sequence[str] | None = None) -> None:
    """The run file of a dbt command whose target folder is `target_path`: the lake, and for a run of business
    dates the first and last (inclusive ISO dates)."""
    target_path.mkdir(parents=True, exist_ok=True)
    run = {"lake_root": lake_root, "window": list(window) if window else None}
    (target_path / RUN_FILE).write_text(json.dumps(run))


def read_run(target_path: Path) -> dict[str, Any] | None:
    """The run file in `target_path`, if there is one."""
    try:
        return json.loads((target_path / RUN_FILE).read_text())
    except FileNotFoundError:
        return None
