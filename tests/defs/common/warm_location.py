"""A code location for the run launcher's tests: it records which process imported it."""

import os
import sys
import threading
from pathlib import Path

import dagster as dg

IMPORTED_IN = os.getpid()


class Hold(dg.Config):
    until_file_exists: str = ""  # the step waits until this file exists (empty: it does not wait)


@dg.asset
def probe(config: Hold) -> dg.MaterializeResult:
    if config.until_file_exists:
        while not Path(config.until_file_exists).exists():
            threading.Event().wait(0.05)
    # The packages the run's process holds: this location imports none of the preloaded ones itself.
    packages = sorted({name.partition(".")[0] for name in sys.modules})
    return dg.MaterializeResult(metadata={"pid": os.getpid(), "imported_in": IMPORTED_IN, "packages": packages})


defs = dg.Definitions(assets=[probe], executor=dg.in_process_executor)  # the step runs in the run's process
