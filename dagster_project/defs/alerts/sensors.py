"""Alerts: a failed run, a failed check, an asset overdue for its freshness policy, sent through every channel
the `alerts` resource has (settings decide which).

With no channel configured the sensors are still defined, so the UI lists them, but stopped, and their
description says what to set. A delivery is attempted once per event; one that no channel took fails the
sensor's tick, so it shows in the UI beside the run it was about.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import dagster as dg

from dagster_project import settings
from dagster_project.defs.alerts.resources import AlertsResource
from dagster_project.defs.common.freshness import EXPECTATION_METADATA_KEY
from dagster_project.lib.clients.alerts import Alert, AlertDeliveryError, detail

OFF = (
    "Off: no alert channel is configured. Set MEDALLION_ALERT_WEBHOOK_URL, MEDALLION_ALERT_SLACK_WEBHOOK_URL, "
    "or MEDALLION_ALERT_SMTP_HOST with MEDALLION_ALERT_EMAIL_TO, and reload the code location."
)
PARTITION_TAG = "dagster/partition"


def _status(channels: Sequence[str]) -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if channels else dg.DefaultSensorStatus.STOPPED


def _description(what: str, channels: Sequence[str]) -> str:
    return f"{what} Sends to: {', '.join(channels)}." if channels else f"{what} {OFF}"


def _owners(repository: dg.RepositoryDefinition | None, keys: Iterable[dg.AssetKey]) -> str:
    if repository is None:
        return ""
    graph = repository.asset_graph
    return ", ".join(sorted({owner for key in keys if graph.has(key) for owner in graph.get(key).owners}))


def _failed_checks(instance: dg.DagsterInstance, run_id: str) -> list:
    """The failed ERROR-severity check evaluations of a run (gates and dbt tests; WARN ones only show in the UI)."""
    evaluations = [
        entry.dagster_event.asset_check_evaluation_data
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        if entry.dagster_event is not None
    ]
    return [e for e in evaluations if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR]


def _planned_assets(instance: dg.DagsterInstance, run_id: str) -> set[dg.AssetKey]:
    """The assets a run set out to materialize."""
    return {
        entry.dagster_event.asset_key
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
        if entry.dagster_event is not None and entry.dagster_event.asset_key is not None
    }


def _check_line(evaluation) -> str:  # noqa: ANN001 - an AssetCheckEvaluation (not exported by dagster)
    where = f" [{evaluation.partition}]" if evaluation.partition else ""
    gate = " (blocking: downstream held back)" if evaluation.blocking else ""
    about = f": {detail(evaluation.description)}" if evaluation.description else ""
    return f"check {evaluation.asset_key.to_user_string()} :: {evaluation.check_name}{where} failed{gate}{about}"


def _run_facts(run: dg.DagsterRun, owners: str) -> dict[str, str]:
    facts = {"job": run.job_name, "run_id": run.run_id}
    if run.tags.get(PARTITION_TAG):
        facts["partition"] = run.tags[PARTITION_TAG]
    if owners:
        facts["owners"] = owners
    return facts


def _step_error(event: dg.DagsterEvent) -> str:
    """What broke in a step: a raised dg.Failure's description, else the innermost error (the one user code
    raised, which Dagster wraps in its own)."""
    data = event.step_failure_data
    if data.user_failure_data is not None and data.user_failure_data.description:
        return detail(data.user_failure_data.description)
    error = data.error
    while error is not None and error.cause is not None:
        error = error.cause
    return detail(error.message) if error is not None else "failed"


def run_failure_alert(context: dg.RunFailureSensorContext, alerts: AlertsResource) -> Alert:
    run = context.dagster_run
    partition = run.tags.get(PARTITION_TAG)
    steps = [f"step {event.step_key}: {_step_error(event)}" for event in context.get_step_failure_events()]
    checks = _failed_checks(context.instance, run.run_id)
    return Alert(
        kind="run_failure",
        title=f"Run failed: {run.job_name}" + (f" [{partition}]" if partition else ""),
        details=(detail(context.failure_event.message or ""), *steps, *(_check_line(c) for c in checks)),
        facts=_run_facts(run, _owners(context.repository_def, _planned_assets(context.instance, run.run_id))),
        url=alerts.link(f"runs/{run.run_id}"),
    )


def check_failure_alert(context: dg.RunStatusSensorContext, alerts: AlertsResource) -> Alert | None:
    run = context.dagster_run
    checks = _failed_checks(context.instance, run.run_id)
    if not checks:
        return None
    assets = {c.asset_key for c in checks}
    first = checks[0]
    title = (
        f"Check failed: {first.asset_key.to_user_string()} :: {first.check_name}"
        if len(checks) == 1
        else f"{len(checks)} checks failed in run {run.job_name}"
    ) + (f" [{first.partition}]" if len(checks) == 1 and first.partition else "")
    return Alert(
        kind="check_failure",
        title=title,
        details=tuple(_check_line(c) for c in checks),
        facts=_run_facts(run, _owners(context.repository_def, assets)),
        url=alerts.link(f"runs/{run.run_id}"),
    )


def build_alert_sensors(channels: Sequence[str], *, minimum_interval_seconds: int = 30) -> list[dg.SensorDefinition]:
    """The run-failure, check-failure and freshness alert sensors, running when `channels` is not empty."""

    @dg.run_failure_sensor(
        name="run_failure_alerts",
        default_status=_status(channels),
        minimum_interval_seconds=minimum_interval_seconds,
        description=_description("Sends an alert for every failed run, with its failed steps and checks.", channels),
    )
    def run_failure_alerts(context: dg.RunFailureSensorContext, alerts: AlertsResource) -> None:
        _deliver(context.log, alerts, run_failure_alert(context, alerts))

    @dg.run_status_sensor(
        name="check_failure_alerts",
        run_status=dg.DagsterRunStatus.SUCCESS,
        default_status=_status(channels),
        minimum_interval_seconds=minimum_interval_seconds,
        description=_description(
            "Sends an alert for every run that succeeded with a failed check of severity ERROR (a gate, a dbt "
            "test); failed runs are reported with their checks by run_failure_alerts.",
            channels,
        ),
    )
    def check_failure_alerts(context: dg.RunStatusSensorContext, alerts: AlertsResource) -> None:
        alert = check_failure_alert(context, alerts)
        if alert is not None:
            _deliver(context.log, alerts, alert)

    @dg.sensor(
        name="freshness_alerts",
        default_status=_status(channels),
        minimum_interval_seconds=minimum_interval_seconds,
        description=_description(
            "Sends an alert when an asset becomes overdue for its freshness policy, and when it is fresh again.",
            channels,
        ),
    )
    def freshness_alerts(context: dg.SensorEvaluationContext, alerts: AlertsResource) -> dg.SensorResult:
        return _freshness_tick(context, alerts)

    return [run_failure_alerts, check_failure_alerts, freshness_alerts]


def _deliver(log: logging.Logger, alerts: AlertsResource, alert: Alert, *, raise_on_failure: bool = True) -> bool:
    """Whether some channel took the alert. A failed run or check is reported once (the run status sensor
    moves past it either way), so a delivery no channel took fails the tick; a freshness alert that no
    channel took is logged and tried again on the next tick."""
    if not alerts.channels:
        log.info(f"not sent (no alert channel configured): {alert.title}")
        return False
    try:
        delivery = alerts.send(alert)
    except AlertDeliveryError as exc:
        if raise_on_failure:
            raise
        log.error(f"alert not delivered, will retry: {exc}")
        return False
    for channel, reason in delivery.failed.items():
        log.error(f"alert not delivered to {channel}: {reason}")
    log.info(f"alert sent to {', '.join(delivery.delivered)}: {alert.title}")
    return True


def _freshness_tick(context: dg.SensorEvaluationContext, alerts: AlertsResource) -> dg.SensorResult:
    """Compares each asset's freshness state (kept by Dagster's freshness daemon) with what was last sent.

    The cursor maps each asset reported overdue to the time its state changed, so an asset is reported once
    per time it goes overdue, and once again when it is fresh again."""
    repository = context.repository_def
    if repository is None:
        return dg.SensorResult(skip_reason="no definitions to read freshness policies from", cursor=context.cursor)
    graph = repository.asset_graph
    keys = [key for key in graph.get_all_asset_keys() if graph.get(key).freshness_policy is not None]
    reported: dict[str, float] = json.loads(context.cursor or "{}")
    sent: list[str] = []
    for key, record in context.instance.get_freshness_state_records(keys).items():
        name = key.to_user_string()
        state = record.freshness_state.value
        changed_at = record.updated_at.timestamp()
        node = graph.get(key)
        expectation = str(node.metadata.get(EXPECTATION_METADATA_KEY, "")) or "its freshness policy"
        facts = {"asset": name, "state": state, "since": record.updated_at.isoformat(timespec="seconds")}
        if node.owners:
            facts["owners"] = ", ".join(node.owners)
        if state == "FAIL" and reported.get(name) != changed_at:
            latest = context.instance.get_latest_materialization_event(key)
            last = f"last loaded {_iso(latest.timestamp)}" if latest else "never loaded"
            alert = Alert(
                kind="freshness_overdue",
                title=f"Overdue: {name}",
                details=(f"expected {expectation}; {last}",),
                facts=facts,
                url=alerts.link(f"assets/{'/'.join(key.path)}"),
            )
            if _deliver(context.log, alerts, alert, raise_on_failure=False):
                reported[name] = changed_at
                sent.append(name)
        elif state in ("PASS", "WARN") and name in reported:
            alert = Alert(
                kind="freshness_recovered",
                title=f"Fresh again: {name}",
                details=(f"expected {expectation}",),
                facts=facts,
                url=alerts.link(f"assets/{'/'.join(key.path)}"),
            )
            if _deliver(context.log, alerts, alert, raise_on_failure=False):
                del reported[name]
                sent.append(name)
    return dg.SensorResult(
        cursor=json.dumps(reported, sort_keys=True),
        skip_reason=None if sent else f"{len(reported)} asset(s) overdue, already reported",
    )


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(sensors=build_alert_sensors(settings.alert_channels()))
