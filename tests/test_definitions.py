"""Loading the code location, and a snapshot of what it defines, so a rename shows up in review."""

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from dagster_project.definitions import AUTOMATION_SENSOR, FOLLOW_UPSTREAM
from dagster_project.definitions import defs as load_defs
from dagster_project.defs.airbyte.assets import AIRBYTE_OFF
from dagster_project.defs.alerts.sensors import OFF as ALERTS_OFF
from dagster_project.defs.common.freshness import GOLD_FRESHNESS, freshness_policy
from dagster_project.lib.sources.registry import SOURCES
from tests.fakes.alert_receivers import wait_for

EXPECTED_ASSETS = {
    "landing/sftp_inbox": "landing",
    "landing/customers": "landing",
    "bronze/customers": "bronze",
    "quarantine/customers": "quarantine",
    "landing/psp_payouts": "landing",
    "bronze/psp_payouts": "bronze",
    "quarantine/psp_payouts": "quarantine",
    "landing/payment_events": "landing",
    "bronze/payment_events": "bronze",
    "quarantine/payment_events": "quarantine",
    "silver/stg_acme__customer_versions": "silver",
    "silver/stg_acme__customers": "silver",
    "silver/stg_psp__payment_events": "silver",
    "silver/stg_psp__charges": "silver",
    "silver/stg_psp__payouts": "silver",
    "gold/customers_history": "gold",
    "gold/dim_customers": "gold",
    "gold/fct_customer_daily_metrics": "gold",
    "gold/fct_payments": "gold",
    "gold/fct_daily_revenue": "gold",
    "gold/payout_reconciliation": "gold",
    "airbyte/shop_orders_sync": "landing",
    "bronze/orders": "bronze",
    "quarantine/orders": "quarantine",
    "silver/stg_shop__orders": "silver",
    "gold/fct_customer_revenue": "gold",
    "gold/orders_without_successful_charge": "gold",
    "gold/customer_segments": "gold",
    "reverse_etl/crm_customer_scores": "reverse_etl",
    # added by declaration only (lib/sources/registry.py) plus their dbt staging models
    "landing/consents": "landing",
    "bronze/consents": "bronze",
    "quarantine/consents": "quarantine",
    "silver/stg_acme__consents": "silver",
    "landing/shop_events": "landing",
    "bronze/shop_events": "bronze",
    "quarantine/shop_events": "quarantine",
    "silver/stg_shop__events": "silver",
}

EXPECTED_GATES = {
    ("bronze/customers", "gx_bronze_gate"),
    ("bronze/psp_payouts", "gx_bronze_gate"),
    ("bronze/payment_events", "gx_bronze_gate"),
    ("silver/stg_acme__customers", "gx_silver_gate"),
    ("gold/dim_customers", "gx_gold_gate"),
    ("gold/payout_reconciliation", "gx_gold_gate"),
    ("bronze/orders", "gx_bronze_gate"),
    ("gold/customer_segments", "gx_gold_gate"),
    ("bronze/consents", "gx_bronze_gate"),
    ("bronze/shop_events", "gx_bronze_gate"),
}


@functools.cache
def _defs() -> dg.Definitions:
    """Loaded and validated once for the module: every test here only reads the definitions."""
    defs = load_defs()
    defs.validate_loadable(defs)
    return defs


def test_asset_keys_and_groups_snapshot():
    specs = {s.key.to_user_string(): s.group_name for s in _defs().resolve_all_asset_specs()}
    assert specs == EXPECTED_ASSETS


def test_every_layer_gate_is_a_blocking_check():
    graph = _defs().resolve_asset_graph()
    checks = {key: graph.get_check_spec(key) for key in graph.asset_check_keys}
    gates = {(k.asset_key.to_user_string(), k.name) for k, spec in checks.items() if spec.blocking}
    assert EXPECTED_GATES <= gates
    # dbt tests are asset checks too.
    assert any(k.name.startswith("unique_stg_acme__customers") for k in checks)


def test_silver_and_gold_follow_upstream_only_past_passing_gates():
    graph = _defs().resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        condition = graph.get(key).automation_condition
        if key.path[0] in ("silver", "gold", "reverse_etl"):
            assert condition == FOLLOW_UPSTREAM, key
        else:
            assert condition is None, key


UNATTENDED_SENSORS = {"follow_upstream_automation", "sftp_inbox_sensor", "webhook_events_sensor"}
AIRBYTE_INSTIGATORS = {"shop_orders_sync_hourly", "shop_orders_landed_sensor"}
ALERT_SENSORS = {"run_failure_alerts", "check_failure_alerts", "freshness_alerts"}


def test_sensors_and_jobs():
    defs = _defs()
    assert {s.name for s in defs.sensors or []} == UNATTENDED_SENSORS | ALERT_SENSORS | {"shop_orders_landed_sensor"}
    assert {j.name for j in defs.resolve_all_job_defs()} >= {
        "customers_intake",
        "psp_payouts_intake",
        "consents_intake",
        "payment_events_ingest",
        "shop_events_ingest",
    }


def test_every_registered_source_has_bronze_quarantine_and_a_blocking_gate():
    graph = _defs().resolve_asset_graph()
    for name in SOURCES:
        bronze, quarantine = dg.AssetKey(["bronze", name]), dg.AssetKey(["quarantine", name])
        assert graph.has(bronze) and graph.has(quarantine), name
        assert graph.get_check_spec(dg.AssetCheckKey(bronze, "gx_bronze_gate")).blocking, name


@pytest.mark.slow  # a fresh interpreter loads the whole code location
def test_the_code_location_loads_without_the_heavy_libraries():
    """Every run pod and the code server load the definitions: what only a run needs is imported by the run.

    dbt's selection engine (its graph modules and networkx, and the resource tracker process its `Manifest`
    starts) is not needed to build the dbt steps either (defs/transform/assets.py)."""
    heavy = ["great_expectations", "pandera", "polars", "sqlalchemy", "paramiko", "airbyte_api", "deltalake", "duckdb"]
    heavy += ["networkx", "dbt.graph", "dbt.contracts.graph.manifest", "multiprocessing.resource_tracker"]
    code = (
        "import sys\n"
        "import dagster_project.definitions as d\n"
        "d.defs().resolve_asset_graph()\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _statuses(defs: dg.Definitions) -> dict[str, str]:
    """Each schedule's and sensor's status when nobody has touched it, as the daemon reads it."""
    repository = defs.get_repository_def()
    instigators = [*repository.sensor_defs, *repository.schedule_defs]
    return {i.name: i.default_status.value for i in instigators}


def _unset(monkeypatch: pytest.MonkeyPatch, *prefixes: str) -> None:
    for name in list(os.environ):
        if name.startswith(prefixes):
            monkeypatch.delenv(name)


def test_automation_and_intake_start_running_and_what_has_nothing_to_talk_to_says_why_it_is_off(
    monkeypatch: pytest.MonkeyPatch,
):
    _unset(monkeypatch, "MEDALLION_AIRBYTE_", "MEDALLION_ALERT_")
    defs = load_defs()
    statuses = _statuses(defs)

    assert {name: statuses[name] for name in UNATTENDED_SENSORS} == dict.fromkeys(UNATTENDED_SENSORS, "RUNNING")
    # The automation sensor declared in code replaces Dagster's implicit one, which starts stopped.
    assert "default_automation_condition_sensor" not in statuses
    graph = defs.resolve_asset_graph()
    automated = {key for key in graph.get_all_asset_keys() if graph.get(key).automation_condition is not None}
    assert automated and automated <= AUTOMATION_SENSOR.asset_selection.resolve(graph)
    assert {name: statuses[name] for name in AIRBYTE_INSTIGATORS | ALERT_SENSORS} == dict.fromkeys(
        AIRBYTE_INSTIGATORS | ALERT_SENSORS, "STOPPED"
    )
    repository = defs.get_repository_def()
    assert AIRBYTE_OFF in (repository.get_schedule_def("shop_orders_sync_hourly").description or "")
    assert AIRBYTE_OFF in (repository.get_sensor_def("shop_orders_landed_sensor").description or "")
    for name in ALERT_SENSORS:
        assert ALERTS_OFF in (repository.get_sensor_def(name).description or ""), name


def test_with_airbyte_and_an_alert_channel_configured_their_schedule_and_sensors_run(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MEDALLION_AIRBYTE_SERVER_URL", "http://127.0.0.1:8001/api/public/v1")
    monkeypatch.setenv("MEDALLION_AIRBYTE_CONNECTION_ID", "c0ffee00-0000-4000-8000-000000000001")
    monkeypatch.setenv("MEDALLION_ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hooks/alerts")
    statuses = _statuses(load_defs())
    assert {name: statuses[name] for name in AIRBYTE_INSTIGATORS | ALERT_SENSORS | UNATTENDED_SENSORS} == dict.fromkeys(
        AIRBYTE_INSTIGATORS | ALERT_SENSORS | UNATTENDED_SENSORS, "RUNNING"
    )


def test_retention_runs_daily_unattended_from_the_start():
    """Nothing else expires anything: the retention schedule is on before anyone touches a toggle."""
    defs = _defs()
    assert _statuses(defs)["retention_daily"] == "RUNNING"
    schedule = defs.get_repository_def().get_schedule_def("retention_daily")
    assert schedule.job_name == "retention" and schedule.execution_timezone == "UTC"


def test_bronze_keeps_its_source_freshness_declaration_and_gold_the_layer_one():
    graph = _defs().resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        layer, name = key.path[0], key.path[-1]
        policy = graph.get(key).freshness_policy
        if layer == "bronze":
            assert SOURCES[name].freshness is not None, f"source {name} declares no freshness"
            assert policy == freshness_policy(SOURCES[name].freshness), key
        elif layer == "gold":
            assert policy == freshness_policy(GOLD_FRESHNESS), key
        else:
            assert policy is None, key


def test_gold_is_due_after_every_partner_feed_it_waits_for():
    for spec in SOURCES.values():
        deadline = spec.freshness
        if hasattr(deadline, "time"):
            assert (deadline.timezone, deadline.days) == (GOLD_FRESHNESS.timezone, GOLD_FRESHNESS.days), spec.name
            assert deadline.time < GOLD_FRESHNESS.time, f"{spec.name} is due at {deadline.time}, after gold"


@pytest.mark.slow  # starts the real dagster-daemon on the whole code location
def test_the_daemon_evaluates_automation_sensors_and_freshness_on_a_fresh_instance(
    tmp_path: Path, parsed_manifest: Path
):
    """What `make dev` gets before anyone touches a toggle: the daemon ticks the automation and intake sensors,
    evaluates every freshness policy, and leaves alone what is off."""
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    prefixes = ("MEDALLION_", "DAGSTER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env |= {
        "DAGSTER_HOME": str(home),
        "MEDALLION_DATA_DIR": str(tmp_path / "data"),
        "MEDALLION_PII_HMAC_KEY": "test-only-hmac-key-0123456789abcdef",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # Create the instance's SQLite storage before any process opens it: the daemon and its code server
    # initializing a fresh one at the same moment can both stamp its schema version.
    with dg.DagsterInstance.local_temp(str(home)):
        pass
    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-m", "dagster_project.definitions"],
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    graph = _defs().resolve_asset_graph()
    due = [key for key in graph.get_all_asset_keys() if graph.get(key).freshness_policy is not None]
    try:
        with dg.DagsterInstance.local_temp(str(home)) as instance:

            def ticked() -> set[str]:
                assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
                return {
                    state.instigator_name
                    for state in instance.all_instigator_state()
                    if instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
                }

            wait_for(lambda: UNATTENDED_SENSORS <= ticked(), timeout=300, what=f"first ticks of {UNATTENDED_SENSORS}")
            states = wait_for(
                lambda: len(records := instance.get_freshness_state_records(due)) == len(due) and records,
                timeout=300,
                what="the freshness daemon's first evaluation of every policy",
            )
            # Nothing has loaded yet, so nothing can be judged: unknown, not failing and not silently absent.
            assert {record.freshness_state.value for record in states.values()} == {"UNKNOWN"}
            assert not (AIRBYTE_INSTIGATORS | ALERT_SENSORS) & ticked()
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        log.close()
