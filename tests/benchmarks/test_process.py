"""A measured process's peak RSS is its own, however much the process that starts it holds."""

import subprocess
import sys

from benchmarks.process import run_measured

HOLD_MIB = 600
USE_MIB = 100
ALLOCATE = f"x = bytearray({USE_MIB} * 1024 * 1024)"


def test_the_peak_rss_of_a_child_is_its_own_not_its_starters():
    held = bytearray(HOLD_MIB * 1024 * 1024)
    held[::4096] = b"\1" * len(held[::4096])  # every page touched: in this process's RSS
    usage = run_measured([sys.executable, "-c", ALLOCATE], stdout=subprocess.DEVNULL)
    assert usage.returncode == 0
    assert USE_MIB <= usage.peak_rss_mib < HOLD_MIB / 2, usage
    # Started directly, the same child reports at least what this process held (what `make bench` printed).
    direct = subprocess.run(
        [
            sys.executable,
            "-c",
            f"{ALLOCATE}\nimport resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(direct.stdout) / 1024 >= HOLD_MIB


def test_a_failing_command_reports_its_exit_code():
    usage = run_measured([sys.executable, "-c", "raise SystemExit(3)"], stdout=subprocess.DEVNULL)
    assert usage.returncode == 3
