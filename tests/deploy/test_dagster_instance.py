"""The Dagster instance configurations in infra/ load and work: storage, run queue, pools, run monitoring.

The PostgreSQL tests run the production yaml against a real server, with the Kubernetes run
launcher swapped for the default one (there is no cluster here) - which is exactly the compose
instance, so both files are exercised.
"""

import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from dagster_project.defs.common.partitions import LAKE_REBUILD_POOL, daily_partitions

EMBEDDED_YAML = "infra/dagster/dagster.yaml"
POSTGRES_YAML = "infra/dagster/dagster-postgres.yaml"
COMPOSE_YAML = "infra/compose/dagster.yaml"

BUSINESS_DATE = "2025-11-05"
# What the issue asks of a killed run: the next one proceeds within two minutes. The run monitoring
# settings alone must leave room for the rest (dequeuing the next run, starting its worker).
SLOT_FREED_WITHIN_SECONDS = 60


# A stand-in for the platform's steps: daily partitioned (as bronze and incremental dbt models) and in the
# platform's one pool (as full dbt rebuilds), so a run stores partitions and claims a pool slot.
@dg.asset(partitions_def=daily_partitions, pool=LAKE_REBUILD_POOL)
def pool_probe(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Writes one partition of a pretend table."""
    return dg.MaterializeResult(metadata={"partition": context.partition_key, "rows": 3})


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _instance(config: dict[str, Any], home: Path) -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return dg.DagsterInstance.from_config(str(home))


def _materialize(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    result = dg.materialize([pool_probe], instance=instance, partition_key=BUSINESS_DATE)
    assert result.success
    return result


def _assert_probe_materialized(instance: dg.DagsterInstance, run_id: str) -> None:
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags["dagster/partition"] == BUSINESS_DATE
    assert instance.get_materialized_partitions(pool_probe.key) == {BUSINESS_DATE}
    # The step claimed the pool, which the instance created with its one-slot default.
    pool = instance.event_log_storage.get_concurrency_info(LAKE_REBUILD_POOL)
    assert pool.slot_count == 1
    assert pool.claimed_slots == []


def _assert_frees_the_slots_of_ended_runs(instance: dg.DagsterInstance, config: str) -> None:
    """The daemon runs run monitoring, which frees the pool slots a killed run still holds, soon enough."""
    assert instance.run_monitoring_enabled, f"{config}: run_monitoring.enabled must be true"
    assert "MONITORING" in instance.get_required_daemon_types(), f"{config}: the daemon would not monitor runs"
    free_after = instance.run_monitoring_settings.get("free_slots_after_run_end_seconds") or 0
    assert free_after > 0, (
        f"{config}: run_monitoring.free_slots_after_run_end_seconds is unset or 0, so the pool slots of a "
        "killed run are never freed and every later step of that pool waits for ever"
    )
    poll = instance.run_monitoring_poll_interval_seconds
    # One poll to notice the dead worker, the delay, one more poll to free the slots.
    worst_case = 2 * poll + free_after
    assert worst_case <= SLOT_FREED_WITHIN_SECONDS, (
        f"{config}: a killed run's slot may stay taken {worst_case} s (2 x poll_interval_seconds + "
        f"free_slots_after_run_end_seconds), more than {SLOT_FREED_WITHIN_SECONDS} s"
    )
    assert 0 < instance.run_monitoring_start_timeout_seconds <= 600, f"{config}: start_timeout_seconds"
    assert 0 < instance.run_monitoring_cancel_timeout_seconds <= 120, f"{config}: cancel_timeout_seconds"


def _assert_notices_dead_runs(instance: dg.DagsterInstance, config: str) -> None:
    """A run whose worker died ends some time, so its slots are freed: the launcher checks the worker's
    health, or (the default launcher cannot) a maximum runtime ends it."""
    launcher = instance.run_launcher
    assert launcher.supports_check_run_worker_health or instance.run_monitoring_max_runtime_seconds > 0, (
        f"{config}: {type(launcher).__name__} cannot check a run worker's health and no "
        "run_monitoring.max_runtime_seconds is set, so a run whose code server died with it stays STARTED "
        "and keeps its pool slots for ever"
    )


@pytest.fixture
def postgres_env(postgres_database: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSTER_PG_HOST", postgres_database["host"])
    monkeypatch.setenv("DAGSTER_PG_PORT", postgres_database["port"])
    monkeypatch.setenv("DAGSTER_PG_DB", postgres_database["db"])
    monkeypatch.setenv("DAGSTER_PG_USERNAME", postgres_database["user"])
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "unused-with-trust-auth")
    monkeypatch.setenv("DAGSTER_COMPUTE_LOGS_DIR", str(tmp_path / "compute-logs"))


def _postgres_yaml_with_local_launcher(repo_root: Path) -> dict[str, Any]:
    config = _load(repo_root / POSTGRES_YAML)
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    config["run_launcher"] = {"module": "dagster.core.launcher", "class": "DefaultRunLauncher"}
    return config


# --------------------------------------------------------------------------------------------------
# embedded (SQLite)
# --------------------------------------------------------------------------------------------------


def test_embedded_instance_keeps_everything_under_dagster_home(
    repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "dagster"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with _instance(_load(repo_root / EMBEDDED_YAML), home) as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert not instance.telemetry_enabled
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config is not None
        assert concurrency.run_queue_config.max_concurrent_runs >= 1
        assert concurrency.pool_config.default_pool_limit == 1
        _assert_frees_the_slots_of_ended_runs(instance, EMBEDDED_YAML)
        _assert_notices_dead_runs(instance, EMBEDDED_YAML)

        result = _materialize(instance)
        _assert_probe_materialized(instance, result.run_id)

    written = {p.relative_to(home).parts[0] for p in home.rglob("*.db")}
    assert written, "SQLite storage wrote no database under DAGSTER_HOME"


# --------------------------------------------------------------------------------------------------
# production (PostgreSQL)
# --------------------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_instance_has_production_storage_queue_and_limits(
    repo_root: Path, tmp_path: Path, postgres_env: None
) -> None:
    with _instance(_postgres_yaml_with_local_launcher(repo_root), tmp_path / "home") as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert type(instance.compute_log_manager).__name__ == "LocalComputeLogManager"
        assert not instance.telemetry_enabled

        concurrency = instance.get_concurrency_config()
        queue = concurrency.run_queue_config
        assert queue is not None
        assert queue.max_concurrent_runs == 10
        assert concurrency.pool_config.default_pool_limit == 1
        assert concurrency.pool_config.pool_granularity is not None
        assert concurrency.pool_config.pool_granularity.value == "op"
        _assert_frees_the_slots_of_ended_runs(instance, POSTGRES_YAML)


@pytest.mark.postgres
def test_postgres_instance_stores_runs_ticks_cursors_and_partitions(
    repo_root: Path, tmp_path: Path, postgres_env: None
) -> None:
    # Storage and scheduler records have no public constructors; the round trip needs the
    # internal record types the daemon itself writes.
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.definitions.sensor_definition import SensorType
    from dagster._core.remote_origin import (
        GrpcServerCodeLocationOrigin,
        RemoteInstigatorOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.scheduler.instigation import (
        InstigatorState,
        InstigatorStatus,
        SensorInstigatorData,
        TickData,
        TickStatus,
    )

    config = _postgres_yaml_with_local_launcher(repo_root)
    location = GrpcServerCodeLocationOrigin(host="user-code", port=3030, location_name="medallion")
    repository = RemoteRepositoryOrigin(code_location_origin=location, repository_name="__repository__")
    schedule = RemoteInstigatorOrigin(repository_origin=repository, instigator_name="daily_gold_schedule")
    sensor = RemoteInstigatorOrigin(repository_origin=repository, instigator_name="sftp_inbox_sensor")

    with _instance(config, tmp_path / "writer") as instance:
        result = _materialize(instance)

        tick = instance.create_tick(
            TickData(
                instigator_origin_id=schedule.get_id(),
                instigator_name=schedule.instigator_name,
                instigator_type=InstigatorType.SCHEDULE,
                status=TickStatus.STARTED,
                timestamp=time.time(),
                selector_id=schedule.get_selector().get_id(),
            )
        )
        instance.update_tick(tick.with_status(TickStatus.SUCCESS).with_run_info(run_id=result.run_id))

        instance.add_instigator_state(
            InstigatorState(
                sensor,
                InstigatorType.SENSOR,
                InstigatorStatus.RUNNING,
                SensorInstigatorData(cursor="seq-00022", sensor_type=SensorType.STANDARD),
            )
        )
        state = instance.get_instigator_state(sensor.get_id(), sensor.get_selector().get_id())
        assert state is not None
        instance.update_instigator_state(
            state.with_data(SensorInstigatorData(cursor="seq-00023", sensor_type=SensorType.STANDARD))
        )

    # A second instance, built from the same file, sees all of it: the state is in PostgreSQL.
    with _instance(config, tmp_path / "reader") as instance:
        _assert_probe_materialized(instance, result.run_id)
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": BUSINESS_DATE}))
        assert [run.run_id for run in runs] == [result.run_id]

        ticks = instance.get_ticks(schedule.get_id(), schedule.get_selector().get_id())
        assert [(t.status, list(t.run_ids)) for t in ticks] == [(TickStatus.SUCCESS, [result.run_id])]

        state = instance.get_instigator_state(sensor.get_id(), sensor.get_selector().get_id())
        assert state is not None and state.is_running
        assert state.instigator_data.cursor == "seq-00023"


@pytest.mark.postgres
def test_compose_instance_is_the_production_one_with_a_local_launcher(
    repo_root: Path, tmp_path: Path, postgres_env: None
) -> None:
    compose = _load(repo_root / COMPOSE_YAML)
    expected = _postgres_yaml_with_local_launcher(repo_root)
    # The default launcher cannot see a run whose code server died with it: compose also ends runs that
    # outlive a maximum runtime, which Kubernetes does not need (it checks each run's Job).
    assert "max_runtime_seconds" not in expected["run_monitoring"]
    expected["run_monitoring"]["max_runtime_seconds"] = compose["run_monitoring"].get("max_runtime_seconds")
    assert compose == expected

    with _instance(compose, tmp_path / "home") as instance:
        assert type(instance.run_launcher).__name__ == "DefaultRunLauncher"
        _assert_frees_the_slots_of_ended_runs(instance, COMPOSE_YAML)
        _assert_notices_dead_runs(instance, COMPOSE_YAML)
        result = _materialize(instance)
        _assert_probe_materialized(instance, result.run_id)


def test_production_instance_takes_every_credential_from_the_environment(repo_root: Path) -> None:
    storage = _load(repo_root / POSTGRES_YAML)["storage"]["postgres"]["postgres_db"]
    assert set(storage) >= {"hostname", "port", "db_name", "username", "password"}
    for field, value in storage.items():
        assert isinstance(value, dict) and set(value) == {"env"}, f"postgres_db.{field} is not from env"


@pytest.mark.postgres
def test_production_instance_launches_runs_as_kubernetes_jobs(
    repo_root: Path, tmp_path: Path, postgres_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kubernetes

    # No cluster here: skip reading the in-cluster service account, keep everything else real
    # (dagster-k8s validates the launcher config against its schema while building it).
    monkeypatch.setattr(kubernetes.config, "load_incluster_config", lambda *args, **kwargs: None)
    monkeypatch.setenv("DAGSTER_K8S_INSTANCE_CONFIG_MAP", "dagster-instance")
    monkeypatch.setenv("DAGSTER_K8S_PG_PASSWORD_SECRET", "dagster-postgresql-secret")
    monkeypatch.setenv("DAGSTER_K8S_JOB_NAMESPACE", "medallion")
    monkeypatch.setenv("DAGSTER_K8S_SERVICE_ACCOUNT", "medallion-runs")
    monkeypatch.setenv("DAGSTER_HOME", "/opt/dagster/dagster_home")

    with _instance(_load(repo_root / POSTGRES_YAML), tmp_path / "home") as instance:
        launcher = instance.run_launcher
        assert type(launcher).__name__ == "K8sRunLauncher"
        assert launcher.instance_config_map == "dagster-instance"
        assert launcher.postgres_password_secret == "dagster-postgresql-secret"
        assert launcher.job_namespace == "medallion"
        assert launcher.service_account_name == "medallion-runs"
        assert launcher.dagster_home == "/opt/dagster/dagster_home"
        assert launcher.fail_pod_on_run_failure
        _assert_frees_the_slots_of_ended_runs(instance, POSTGRES_YAML)
        _assert_notices_dead_runs(instance, POSTGRES_YAML)
