"""The inbox sensor under the real dagster-daemon, against the real SFTP server: the daemon checks every run
request's partition key when it evaluates a tick, which a sensor function called directly does not. Files dated
outside the partitions, a name too long for its reason file and entries that are not ours sit in the inbox with
a good file; every tick succeeds, the good file is taken and each other entry gets its own outcome."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest

from dagster_project import settings
from dagster_project.defs.sftp.assets import INBOX_KEY
from dagster_project.lib.checksums import crc32_hex
from dagster_project.lib.intake.sftp_inbox import reason_file_name
from dagster_project.lib.sources.registry import CUSTOMERS
from dagster_project.samples.partner_files import write_customer_files
from dagster_project.services.sftp_server import EmbeddedSftpServer
from tests.fakes.alert_receivers import wait_for

pytestmark = [pytest.mark.sftp, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
LOCATION = "tests.defs.sftp.daemon_location"
BIN = Path(sys.executable).parent
WAIT = 300  # seconds; generous for a loaded 2-core machine, and only ever waited out when something is broken
INSTANCE_YAML = """
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
telemetry:
  enabled: false
"""


@contextmanager
def _daemon(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """`dagster-daemon run` on the test location, with this process's settings (the test's SFTP server and
    lake); yields the daemon's log and its DAGSTER_HOME."""
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    env = settings.child_environment(
        {
            "DAGSTER_HOME": str(home),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(REPO),
        }
    )
    # The instance's SQLite storage exists before the daemon and its code server open it.
    with dg.DagsterInstance.local_temp(str(home)):
        pass
    log_path = tmp_path / "daemon.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-m", LOCATION],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield log_path, str(home)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_files_dated_outside_the_partitions_never_stop_the_daemons_ticks(
    sftp_env: EmbeddedSftpServer, tmp_path: Path
) -> None:
    inbox, quarantine, archive = (sftp_env.root / d for d in ("inbox", "quarantine", "archive"))
    [generated] = write_customer_files(tmp_path / "generated", [dt.date(2025, 11, 3)])
    good = generated.path.name
    (inbox / good).write_bytes(generated.path.read_bytes())
    dated = {}
    for label, day in (("future", "2999-01-01"), ("before", "2024-12-31")):
        data = f"customer_id\n{label}\n".encode()
        dated[label] = CUSTOMERS.files.file_name(day, 1, crc32_hex(data))
        (inbox / dated[label]).write_bytes(data)
    long_name = "acme_customers_" + "x" * 236 + ".csv"  # 255 bytes: `<name>.reason.txt.part` cannot exist
    (inbox / long_name).write_bytes(b"x")
    (inbox / ".partner-notes").write_bytes(b"x")
    (inbox / "2024").mkdir()

    # Started once the inbox is full: its first tick sees every entry at once.
    with _daemon(tmp_path) as (log, home), dg.DagsterInstance.local_temp(home) as instance:

        def done() -> bool:
            return (archive / good).exists() and all(
                (quarantine / reason_file_name(n)).exists() for n in (*dated.values(), long_name)
            )

        wait_for(done, timeout=WAIT, what=f"the good file archived and three quarantined (daemon log: {log})")
        wait_for(
            lambda: (
                {r.dagster_run.status for r in instance.get_run_records()}
                <= {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE}
            ),
            timeout=WAIT,
            what="every run finished",
        )
        runs = instance.get_run_records()
        assert {r.dagster_run.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}, log.read_text()[-3000:]
        assert sorted(r.dagster_run.job_name for r in runs) == [
            "customers_intake",
            "sftp_quarantine",
            "sftp_quarantine",
            "sftp_quarantine",
        ]
        [state] = [s for s in instance.all_instigator_state() if s.instigator_name == "sftp_inbox_sensor"]
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id)
        assert len(ticks) >= 2
        failed = [t.error.message for t in ticks if t.error is not None]
        assert failed == []
        observed = instance.fetch_observations(INBOX_KEY, limit=20).records
        reported = {
            r.asset_observation.metadata["entry"].value: r.asset_observation.metadata["reason"].value
            for r in observed
            if "entry" in r.asset_observation.metadata
        }
        assert reported == {
            ".partner-notes": "a hidden or temporary name (starting with '.' or '~'): never taken",
            "2024": "a directory: never taken; the inbox takes files only",
        }

    assert "is after today's partition" in (quarantine / f"{dated['future']}.reason.txt").read_text()
    assert "is before the first partition, 2025-01-01" in (quarantine / f"{dated['before']}.reason.txt").read_text()
    assert (quarantine / reason_file_name(long_name)).read_text().startswith(f"{long_name}: does not follow")
    assert sorted(p.name for p in inbox.iterdir()) == [".partner-notes", "2024"]
