"""helm/dagster-values.yaml (official Dagster chart) agrees with our chart and instance config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

DAGSTER_RELEASE = "dagster"
MEDALLION_RELEASE = "medallion"


@pytest.fixture(scope="module")
def dagster_values(repo_root: Path) -> dict[str, Any]:
    return yaml.safe_load((repo_root / "helm" / "dagster-values.yaml").read_text())


@pytest.fixture(scope="module")
def medallion_docs(repo_root: Path) -> list[dict[str, Any]]:
    with helm_python.Chart.load(repo_root / "helm" / "medallion") as chart:
        values = {"image": {"tag": "1.0.0"}, "config": {"lake": {"root": "s3://acme-lake/medallion"}}}
        rendered = chart.render(values, name=MEDALLION_RELEASE, namespace="data")
    return [d for path, text in rendered.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _camel_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel(k): _camel_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel_keys(v) for v in value]
    return value


def test_concurrency_matches_the_production_instance(repo_root: Path, dagster_values: dict[str, Any]) -> None:
    instance = yaml.safe_load((repo_root / "infra" / "dagster" / "dagster-postgres.yaml").read_text())
    chart = dagster_values["concurrency"]
    assert chart["enabled"] is True
    assert {k: v for k, v in chart.items() if k != "enabled"} == _camel_keys(instance["concurrency"])
    # Dagster refuses run limits in both the run coordinator and `concurrency`.
    queued = dagster_values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert not {"maxConcurrentRuns", "tagConcurrencyLimits"} & set(queued)
    assert dagster_values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"


def test_run_monitoring_matches_the_production_instance(repo_root: Path, dagster_values: dict[str, Any]) -> None:
    instance = yaml.safe_load((repo_root / "infra" / "dagster" / "dagster-postgres.yaml").read_text())
    monitoring = dagster_values["dagsterDaemon"]["runMonitoring"]
    # The chart renders these keys into the instance's `run_monitoring` (its configmap-instance.yaml).
    assert monitoring == _camel_keys(instance["run_monitoring"])
    assert monitoring["enabled"] is True
    # 0 turns freeing off: a killed run would keep its pool slots for ever.
    assert monitoring["freeSlotsAfterRunEndSeconds"] > 0


def test_workspace_points_at_our_code_server(
    dagster_values: dict[str, Any], medallion_docs: list[dict[str, Any]]
) -> None:
    assert dagster_values["dagster-user-deployments"]["enabled"] is False
    [server] = dagster_values["dagsterWebserver"]["workspace"]["servers"]
    services = {d["metadata"]["name"]: d for d in medallion_docs if d["kind"] == "Service"}
    assert server["host"] in services
    assert server["port"] in [p["port"] for p in services[server["host"]]["spec"]["ports"]]
    assert server["name"] == "medallion"


def test_runs_are_kubernetes_jobs_on_external_postgres_from_a_secret(
    dagster_values: dict[str, Any], medallion_docs: list[dict[str, Any]]
) -> None:
    assert dagster_values["runLauncher"]["type"] == "K8sRunLauncher"
    postgres = dagster_values["postgresql"]
    assert postgres["enabled"] is False
    assert postgres["postgresqlPassword"] == ""
    assert dagster_values["generatePostgresqlPasswordSecret"] is False
    secret = dagster_values["global"]["postgresqlSecretName"]
    # Our code server reads the same Secret for the instance password.
    [deployment] = [
        d for d in medallion_docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("user-code")
    ]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "postgresql-password"}
    # ... and mounts the instance ConfigMap the official chart renders for release `dagster`.
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dagster-instance"]["configMap"]["name"] == f"{DAGSTER_RELEASE}-instance"


def test_official_chart_versions_match_the_platform_pin(repo_root: Path, dagster_values: dict[str, Any]) -> None:
    import dagster

    for component in ("dagsterWebserver", "dagsterDaemon"):
        image = dagster_values[component]["image"]
        assert str(image["tag"]) == dagster.__version__, component
    assert dagster_values["telemetry"]["enabled"] is False
    assert dagster.__version__ in (repo_root / "helm" / "dagster-values.yaml").read_text().splitlines()[1]


def test_the_official_chart_holds_no_lake_volume_or_credentials(dagster_values: dict[str, Any]) -> None:
    # Run pods get the lake from the code location's container context; the webserver and the daemon
    # never open it, so nothing of it is configured here.
    launcher = dagster_values["runLauncher"]["config"]["k8sRunLauncher"]
    assert launcher["envConfigMaps"] == [] and launcher["envSecrets"] == []
    assert not {"volumes", "volumeMounts", "envVars", "runK8sConfig"} & set(launcher)
    text = yaml.safe_dump(dagster_values)
    for lake_setting in ("AWS_", "GOOGLE_", "AZURE_STORAGE", "MEDALLION_LAKE_ROOT", "ReadWriteMany"):
        assert lake_setting not in text, lake_setting
