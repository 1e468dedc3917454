"""A measured child process: its wall time, CPU time and peak RSS, its own.

Linux carries a process's peak RSS into every child it starts (a fork copies the parent's pages, and exec keeps
the high-water mark), so a child of a benchmark that holds gigabytes reports at least that much, whatever it
used itself. The command therefore starts from a small launcher process of its own, which forks and execs it
and reports what `wait4` says of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_LAUNCHER = """
import json, os, sys
report, command = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.execvp(command[0], command)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as out:
    json.dump({"returncode": os.waitstatus_to_exitcode(status), "peak_rss_kib": usage.ru_maxrss,
               "cpu_seconds": usage.ru_utime + usage.ru_stime}, out)
"""


@dataclass(frozen=True)
class Usage:
    returncode: int
    seconds: float
    cpu_seconds: float  # user + system, of the command and what it waited for
    peak_rss_mib: float  # the command's own


def run_measured(
    cmd: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None, stdout: IO | int | None = None
) -> Usage:
    """Run `cmd` to completion (its output and errors to `stdout`) and measure it."""
    with tempfile.TemporaryDirectory(prefix="measured-") as tmp:
        report = Path(tmp) / "usage.json"
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(report), *cmd],
            env=None if env is None else dict(env),
            cwd=cwd,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            check=True,
        )
        seconds = time.perf_counter() - start
        usage = json.loads(report.read_text())
    return Usage(usage["returncode"], seconds, usage["cpu_seconds"], usage["peak_rss_kib"] / 1024)
