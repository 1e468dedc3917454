"""How long the code location takes to load, beside a bare `import dagster`, each in a fresh interpreter.

Every run pod and the code server pay the load, so heavy libraries (Great Expectations, pandera, polars,
the dbt CLI, SQLAlchemy, paramiko, dbt's selection engine) must be imported where they are used, not when the
definitions load.

Both are measured with their modules compiled to bytecode, as the image ships them: `make install` compiles
the virtual environment, and the project's own modules are compiled here as the Dockerfile compiles them
(with PYTHONDONTWRITEBYTECODE, set in the image, Python would otherwise compile them again in every process).
"""

from __future__ import annotations

import compileall
import json
import os
import py_compile
import statistics
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1] / "dagster_project"

BARE = "import dagster"
LOCATION = (
    "import dagster_project.definitions as d; defs = d.defs(); defs.resolve_asset_graph(); defs.resolve_all_job_defs()"
)
HEAVY = (
    "great_expectations",
    "pandera",
    "polars",
    "sqlalchemy",
    "paramiko",
    "asyncssh",
    "airbyte_api",
    "deltalake",
    "networkx",
    "dbt.graph",
)
PROBE = """
import json, sys, time
start = time.perf_counter()
exec({code!r})
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "heavy": sorted(m for m in {heavy!r} if m in sys.modules)}}))
"""


def _measure(code: str) -> dict:
    # dagster-dbt looks for `dbt` on PATH, next to this interpreter in the project's environment
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code, heavy=HEAVY)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def compile_project() -> None:
    """The project's modules compiled as the Dockerfile compiles them (checked against their source's hash, so
    an edited module is compiled again when it is imported rather than read stale)."""
    compileall.compile_dir(PROJECT, quiet=1, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)


def run(repeats: int = 3) -> dict:
    """Median seconds of each, interleaved so that machine load affects both alike."""
    compile_project()
    bare, location = [], []
    heavy: list[str] = []
    for _ in range(repeats):
        bare.append(_measure(BARE)["seconds"])
        measured = _measure(LOCATION)
        location.append(measured["seconds"])
        heavy = measured["heavy"]
    return {
        "bare_seconds": statistics.median(bare),
        "location_seconds": statistics.median(location),
        "heavy_modules_loaded": heavy,
    }


if __name__ == "__main__":
    print(run())
