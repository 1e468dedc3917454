"""The alert sensors on a real Dagster instance (SQLite on disk), evaluated tick by tick as the daemon does, with
real failed runs and failed checks, delivering to real receivers on loopback."""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg
import pytest

from dagster_project import settings
from dagster_project.defs.alerts.resources import AlertsResource, alerts_from_settings
from dagster_project.defs.alerts.sensors import OFF, build_alert_sensors
from tests.defs.alerts.conftest import SLACK_PATH, SMTP_PASSWORD, UI_URL
from tests.fakes.alert_receivers import HttpReceiver, SmtpServer

DAY = "2026-11-27"
days = dg.DailyPartitionsDefinition(start_date="2026-11-01")


@dg.asset(key=["bronze", "partner_feed"], partitions_def=days, owners=["team:crm-data"])
def partner_feed() -> None:
    """A feed whose load works but whose gate fails."""


@dg.asset_check(asset=partner_feed, name="gx_bronze_gate", blocking=True, partitions_def=days)
def partner_gate() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, description="email: 3 of 10 rows do not match the expected pattern")


@dg.asset(key=["gold", "fct_orders"], partitions_def=days, owners=["team:commerce-data"])
def fct_orders() -> None:
    """A model built fine whose (non-blocking) tests fail."""


@dg.asset_check(asset=fct_orders, name="unique_fct_orders_order_id", partitions_def=days)
def unique_order_id() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, description="2 duplicate order ids")


@dg.asset_check(asset=fct_orders, name="advisory", partitions_def=days)
def advisory() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, description="only a warning")


@dg.asset(key=["bronze", "broken_feed"], partitions_def=days, owners=["team:payments-data"])
def broken_feed() -> None:
    """A load that fails, with a credential in its error message."""
    raise ConnectionError("could not reach postgresql://etl:hunter2@db.acme.test:5432/inbox: timeout")


feed_job = dg.define_asset_job("partner_feed_intake", selection=[partner_feed.key])
orders_job = dg.define_asset_job("orders_build", selection=[fct_orders.key])
broken_job = dg.define_asset_job("broken_feed_intake", selection=[broken_feed.key])


class Daemonless:
    """Evaluates sensors tick after tick on one instance, keeping each sensor's cursor as the daemon does."""

    def __init__(self, instance: dg.DagsterInstance, resources: dict[str, object]):
        self.instance = instance
        self.sensors = {s.name: s for s in build_alert_sensors(settings.alert_channels())}
        self.defs = dg.Definitions(
            assets=[partner_feed, fct_orders, broken_feed],
            asset_checks=[partner_gate, unique_order_id, advisory],
            jobs=[feed_job, orders_job, broken_job],
            sensors=list(self.sensors.values()),
            resources=resources,
        )
        self.resources = resources
        self.cursors: dict[str, str | None] = {}

    def tick(self, name: str):  # noqa: ANN201 - SensorExecutionData is not exported
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursors.get(name),
            resources=self.resources,
            definitions=self.defs,
            sensor_name=name,
        )
        data = self.sensors[name].evaluate_tick(context)
        self.cursors[name] = data.cursor
        return data

    def run(self, job_name: str) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_job_def(job_name)
        return job.execute_in_process(instance=self.instance, partition_key=DAY, raise_on_error=False)


@pytest.fixture
def instance(tmp_path: Path):
    home = tmp_path / "dagster"
    home.mkdir()
    with dg.DagsterInstance.local_temp(str(home)) as instance:
        yield instance


def test_alert_channels_are_bound_by_reference(alert_env: dict[str, str]):
    resource = alerts_from_settings()
    for field in ("webhook_url", "slack_webhook_url", "smtp_password"):
        assert isinstance(getattr(resource, field), dg.EnvVar), field
    shown = repr(resource)
    for secret in (SLACK_PATH, SMTP_PASSWORD, alert_env["MEDALLION_ALERT_WEBHOOK_URL"]):
        assert secret not in shown


def test_a_failed_run_is_reported_once_on_every_channel_with_its_step_error_redacted(
    alert_env: dict[str, str],
    instance: dg.DagsterInstance,
    receiver: HttpReceiver,
    smtp: SmtpServer,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
):
    caplog.set_level(logging.DEBUG)
    platform = Daemonless(instance, {"alerts": alerts_from_settings()})
    platform.tick("run_failure_alerts")  # the first tick starts from now: earlier failures are history

    result = platform.run("broken_feed_intake")
    assert not result.success
    caplog.clear()  # the run logs its own error; what follows is the alerting
    capfd.readouterr()
    data = platform.tick("run_failure_alerts")

    assert [r.error for r in data.dagster_run_reactions] == [None]
    [alert] = receiver.on("/hooks/generic")
    assert alert["kind"] == "run_failure"
    assert alert["title"] == f"Run failed: broken_feed_intake [{DAY}]"
    assert alert["facts"] == {
        "job": "broken_feed_intake",
        "run_id": result.run_id,
        "partition": DAY,
        "owners": "team:payments-data",
    }
    assert alert["url"] == f"{UI_URL}/runs/{result.run_id}"
    step_line = next(line for line in alert["details"] if line.startswith("step bronze__broken_feed"))
    assert "ConnectionError: could not reach postgresql://etl:***@db.acme.test:5432/inbox: timeout" in step_line
    assert "hunter2" not in str(receiver.posts)
    [slack] = receiver.on(SLACK_PATH)
    assert f"Run failed: broken_feed_intake [{DAY}]" in slack["text"]
    [mail] = smtp.messages
    assert mail["Subject"] == f"[medallion] Run failed: broken_feed_intake [{DAY}]"
    assert "hunter2" not in mail.get_payload()

    # The next tick has nothing new: an alert per failure, not per tick.
    platform.tick("run_failure_alerts")
    assert len(receiver.on("/hooks/generic")) == 1
    # What the platform logged while alerting (the loopback receiver's own access log aside).
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("uvicorn"))
    logged += capfd.readouterr().err  # the sensor's own log goes to stderr
    assert "alert sent to webhook, slack, email" in logged
    for secret in (SLACK_PATH, SMTP_PASSWORD, "hunter2"):
        assert secret not in logged


def test_a_failed_gate_fails_its_run_and_is_named_in_the_run_alert(
    alert_env: dict[str, str], instance: dg.DagsterInstance, receiver: HttpReceiver
):
    platform = Daemonless(instance, {"alerts": alerts_from_settings()})
    platform.tick("run_failure_alerts")
    platform.tick("check_failure_alerts")

    result = platform.run("partner_feed_intake")
    assert not result.success  # a blocking check of severity ERROR fails its step, and so the run
    platform.tick("run_failure_alerts")
    platform.tick("check_failure_alerts")

    [alert] = receiver.on("/hooks/generic")  # one alert: the check is part of the run's
    assert alert["title"] == f"Run failed: partner_feed_intake [{DAY}]"
    assert alert["facts"]["owners"] == "team:crm-data"
    assert (
        f"check bronze/partner_feed :: gx_bronze_gate [{DAY}] failed (blocking: downstream held back): "
        "email: 3 of 10 rows do not match the expected pattern"
    ) in alert["details"]


def test_a_failed_check_in_a_successful_run_is_reported_and_a_warning_is_not(
    alert_env: dict[str, str], instance: dg.DagsterInstance, receiver: HttpReceiver, smtp: SmtpServer
):
    platform = Daemonless(instance, {"alerts": alerts_from_settings()})
    platform.tick("check_failure_alerts")

    result = platform.run("orders_build")
    assert result.success
    platform.tick("check_failure_alerts")

    [alert] = receiver.on("/hooks/generic")
    assert alert["kind"] == "check_failure"
    assert alert["title"] == f"Check failed: gold/fct_orders :: unique_fct_orders_order_id [{DAY}]"
    assert alert["details"] == [
        f"check gold/fct_orders :: unique_fct_orders_order_id [{DAY}] failed: 2 duplicate order ids"
    ]
    assert alert["facts"] == {
        "job": "orders_build",
        "run_id": result.run_id,
        "partition": DAY,
        "owners": "team:commerce-data",
    }
    assert len(smtp.messages) == 1 and len(receiver.on(SLACK_PATH)) == 1


def test_a_delivery_no_channel_took_fails_the_tick_without_leaking_the_url(
    alert_env: dict[str, str], instance: dg.DagsterInstance, receiver: HttpReceiver, smtp: SmtpServer
):
    # Only the webhook configured, and it answers 503.
    resource = AlertsResource(webhook_url=dg.EnvVar("MEDALLION_ALERT_WEBHOOK_URL"), ui_url=UI_URL)
    receiver.status_by_path["/hooks/generic"] = 503
    platform = Daemonless(instance, {"alerts": resource})
    platform.tick("run_failure_alerts")
    platform.run("broken_feed_intake")
    data = platform.tick("run_failure_alerts")

    [reaction] = data.dagster_run_reactions
    assert reaction.error is not None
    assert "webhook: HTTP 503 from 127.0.0.1" in reaction.error.to_string()
    assert "/hooks/generic" not in reaction.error.to_string()


def test_with_no_channel_configured_the_sensors_are_defined_but_stopped_and_send_nothing(
    instance: dg.DagsterInstance, receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch
):
    for name in ("WEBHOOK_URL", "SLACK_WEBHOOK_URL", "SMTP_HOST", "EMAIL_TO"):
        monkeypatch.delenv(f"MEDALLION_ALERT_{name}", raising=False)
    assert settings.alert_channels() == []
    platform = Daemonless(instance, {"alerts": alerts_from_settings()})
    for sensor in platform.sensors.values():
        assert sensor.default_status == dg.DefaultSensorStatus.STOPPED, sensor.name
        assert OFF in (sensor.description or ""), sensor.name

    # Turned on by hand anyway: the failure is seen, nothing is sent, the tick does not fail.
    platform.tick("run_failure_alerts")
    platform.run("broken_feed_intake")
    data = platform.tick("run_failure_alerts")
    assert [r.error for r in data.dagster_run_reactions] == [None]
    assert receiver.posts == []


def test_with_a_channel_configured_the_sensors_start_running(alert_env: dict[str, str]):
    sensors = build_alert_sensors(settings.alert_channels())
    assert {s.name: s.default_status for s in sensors} == {
        "run_failure_alerts": dg.DefaultSensorStatus.RUNNING,
        "check_failure_alerts": dg.DefaultSensorStatus.RUNNING,
        "freshness_alerts": dg.DefaultSensorStatus.RUNNING,
    }
    assert all("Sends to: webhook, slack, email." in (s.description or "") for s in sensors)
