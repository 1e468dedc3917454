"""The alert sensors under the real dagster-daemon: runs launched through the run queue fail or fail a check,
an asset goes overdue for its freshness policy and comes back, and every alert reaches the loopback receivers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from tests.defs.alerts.conftest import SLACK_PATH, SMTP_PASSWORD, UI_URL
from tests.fakes.alert_receivers import HttpReceiver, SmtpServer, wait_for

REPO = Path(__file__).resolve().parents[3]
LOCATION = "tests.defs.alerts.daemon_location"
BIN = Path(sys.executable).parent
WAIT = 300  # seconds; generous for a loaded 2-core machine, and only ever waited out when something is broken

INSTANCE_YAML = """
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
telemetry:
  enabled: false
"""


@pytest.fixture
def daemon_env(tmp_path: Path, alert_env: dict[str, str]) -> dict[str, str]:
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDALLION_", "DAGSTER_"))}
    return (
        env
        | alert_env
        | {
            "DAGSTER_HOME": str(home),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(REPO),
            # Dagster's freshness daemon evaluates every 30 s by default; the policy here is due every minute.
            "FRESHNESS_DAEMON_INTERVAL_SECONDS": "5",
        }
    )


@pytest.fixture
def daemon(daemon_env: dict[str, str], tmp_path: Path) -> Iterator[Path]:
    """`dagster-daemon run` on the test location; yields the path of its log."""
    log_path = tmp_path / "daemon.log"
    # Create the instance's SQLite storage before any process opens it: the daemon and its code server
    # initializing a fresh one at the same moment can both stamp its schema version.
    with dg.DagsterInstance.local_temp(daemon_env["DAGSTER_HOME"]):
        pass
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-m", LOCATION],
            env=daemon_env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield log_path
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _launch(job: str, env: dict[str, str]) -> None:
    subprocess.run(
        [str(BIN / "dagster"), "job", "launch", "-m", LOCATION, "-j", job],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
    )


def _ticked(instance: dg.DagsterInstance) -> set[str]:
    return {
        state.instigator_name
        for state in instance.all_instigator_state()
        if instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
    }


@pytest.mark.slow
def test_failed_runs_failed_checks_and_overdue_assets_reach_every_channel_under_the_daemon(
    daemon: Path, daemon_env: dict[str, str], receiver: HttpReceiver, smtp: SmtpServer
):
    def kinds() -> list[str]:
        return [alert["kind"] for alert in receiver.on("/hooks/generic")]

    with dg.DagsterInstance.local_temp(daemon_env["DAGSTER_HOME"]) as instance:
        # The alert sensors start from "now" on their first tick: launch once they have had it.
        wait_for(
            lambda: {"run_failure_alerts", "check_failure_alerts", "freshness_alerts"} <= _ticked(instance),
            timeout=WAIT,
            what=f"the alert sensors' first ticks (daemon log: {daemon})",
        )
        _launch("partner_feed_intake", daemon_env)
        _launch("broken_feed_intake", daemon_env)

        wait_for(lambda: {"run_failure", "check_failure"} <= set(kinds()), timeout=WAIT, what="run and check alerts")
        by_kind = {alert["kind"]: alert for alert in receiver.on("/hooks/generic")}
        run_alert, check_alert = by_kind["run_failure"], by_kind["check_failure"]
        assert run_alert["title"] == "Run failed: broken_feed_intake"
        assert run_alert["facts"]["owners"] == "team:payments-data"
        assert (
            "step bronze__broken_feed: inbox unavailable: could not reach postgresql://etl:***@db.acme.test/inbox"
            in (run_alert["details"])
        )
        assert run_alert["url"] == f"{UI_URL}/runs/{run_alert['facts']['run_id']}"
        [failed] = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        assert failed.dagster_run.run_id == run_alert["facts"]["run_id"]
        assert check_alert["title"] == "Check failed: bronze/partner_feed :: row_count_matches_received"

        # One minute after its load the feed is overdue; the freshness daemon marks it, the sensor reports it.
        wait_for(lambda: "freshness_overdue" in kinds(), timeout=WAIT, what="the overdue alert")
        overdue = next(a for a in receiver.on("/hooks/generic") if a["kind"] == "freshness_overdue")
        assert overdue["title"] == "Overdue: bronze/partner_feed"
        assert overdue["details"][0].startswith("expected new data at least every minute; last loaded ")
        assert overdue["facts"]["owners"] == "team:crm-data"
        assert overdue["url"] == f"{UI_URL}/assets/bronze/partner_feed"

        # A new load makes it fresh again, and that is said once too.
        _launch("partner_feed_intake", daemon_env)
        wait_for(lambda: "freshness_recovered" in kinds(), timeout=WAIT, what="the fresh-again alert")

    assert kinds().count("freshness_overdue") == 1 and kinds().count("run_failure") == 1
    # Slack and e-mail got the same alerts as the generic webhook, as far as they have come.
    slack_titles = [post["text"].splitlines()[0] for post in receiver.on(SLACK_PATH)]
    assert "*Run failed: broken_feed_intake*" in slack_titles and "*Overdue: bronze/partner_feed*" in slack_titles
    subjects = [message["Subject"] for message in smtp.messages]
    assert "[medallion] Run failed: broken_feed_intake" in subjects
    assert smtp.logins and set(smtp.logins) == {"alerts"}
    # Nothing secret in what was sent; the channels' secrets not in what the daemon and its runs wrote either
    # (the failing run logs its own error, credential included: that is the run's doing, not the alerts').
    sent = str([post.body for post in receiver.posts]) + "".join(str(m) for m in smtp.messages)
    assert "hunter2" not in sent
    logged = daemon.read_text()
    for secret in (SMTP_PASSWORD, SLACK_PATH):
        assert secret not in sent and secret not in logged, secret
