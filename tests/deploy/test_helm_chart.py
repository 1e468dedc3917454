"""helm/medallion renders valid Kubernetes manifests that keep the platform's policies.

Rendering is `helm template` (helm-python-sdk bundles the Helm engine); every manifest is checked
against the strict OpenAPI schemas of every Kubernetes version kubernetes-validate ships.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes
import pytest
import yaml
from dagster_k8s import DagsterK8sJobConfig, construct_dagster_k8s_job
from dagster_k8s.container_context import K8sContainerContext
from kubernetes_validate import utils as kubernetes_validate

RELEASE = "medallion"
NAMESPACE = "data-platform"
TAG = "2025.11.3"
IMAGE = f"ghcr.io/acme/medallion:{TAG}"

# A secret value put where an operator might be tempted to put one; it must never be rendered.
SENTINEL = "S3ntinel-pa55word-never-rendered"

LAKE = "s3://acme-lake/medallion"
MINIMAL: dict[str, Any] = {"image": {"tag": TAG}, "config": {"lake": {"root": LAKE}}}
IRSA_ROLE = "arn:aws:iam::123456789012:role/medallion-lake"
AZURE_CLIENT_ID = "6f2c1a57-0d4e-4f6b-9a51-3b1e2c7d8e90"

VALUE_SETS: dict[str, dict[str, Any]] = {
    "minimal": MINIMAL,
    "irsa": {
        **MINIMAL,
        "config": {"lake": {"root": LAKE, "s3": {"region": "eu-west-1"}}},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": IRSA_ROLE}},
    },
    "minio": {
        **MINIMAL,
        "config": {
            "lake": {
                "root": "s3://lake/medallion",
                "s3": {"region": "us-east-1", "endpointUrl": "http://minio.storage.svc:9000", "allowHttp": True},
            }
        },
        "secrets": {
            "userCode": {
                "AWS_ACCESS_KEY_ID": {"key": "access-key-id", "secretName": "minio-lake"},
                "AWS_SECRET_ACCESS_KEY": {"key": "secret-access-key", "secretName": "minio-lake"},
            }
        },
    },
    "r2": {
        **MINIMAL,
        "config": {
            "lake": {
                "root": "s3://acme-lake/medallion",
                "s3": {
                    "region": "auto",
                    "endpointUrl": "https://0123456789abcdef.r2.cloudflarestorage.com",
                    "copyIfNotExists": "header:cf-copy-destination-if-none-match:*",
                },
            }
        },
        "secrets": {
            "userCode": {
                "AWS_ACCESS_KEY_ID": {"key": "r2-access-key-id"},
                "AWS_SECRET_ACCESS_KEY": {"key": "r2-secret-access-key"},
            }
        },
    },
    "gcs-key": {
        **MINIMAL,
        "config": {"lake": {"root": "gs://acme-lake/medallion"}},
        "secrets": {"googleCredentials": {"existingSecret": "lake-gcp", "key": "sa.json"}},
    },
    "azure-workload-identity": {
        **MINIMAL,
        "config": {"lake": {"root": "az://lake/medallion", "azure": {"storageAccountName": "acmelake"}}},
        "serviceAccount": {"annotations": {"azure.workload.identity/client-id": AZURE_CLIENT_ID}},
    },
    "local-path": {
        **MINIMAL,
        "config": {"lake": {"root": "/data/lake"}},
        "persistence": {"enabled": True, "storageClassName": "nfs-client"},
    },
    "ingress-tls": {
        **MINIMAL,
        "webhookReceiver": {
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "host": "hooks.acme.example",
                "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
                "tls": {"enabled": True, "secretName": "hooks-acme-example-tls"},
            }
        },
    },
    "hpa": {
        **MINIMAL,
        "webhookReceiver": {
            "autoscaling": {
                "enabled": True,
                "minReplicas": 3,
                "maxReplicas": 12,
                "targetCPUUtilizationPercentage": 60,
            }
        },
    },
    "external-secrets": {
        **MINIMAL,
        "imagePullSecrets": [{"name": "regcred"}],
        "secrets": {
            "existingSecret": "platform-from-vault",
            "webhookReceiver": {
                "MEDALLION_WEBHOOK_INBOX_URL": {"key": "url", "secretName": "inbox-db"},
                "MEDALLION_WEBHOOK_SECRETS_STRIPE": {"key": "stripe"},
            },
            "userCode": {
                "MEDALLION_WEBHOOK_INBOX_URL": {"key": "url", "secretName": "inbox-db"},
                "MEDALLION_REVERSE_ETL_URL": {"key": "url", "secretName": "crm-db"},
            },
            "sftp": {"existingSecret": "partner-sftp", "privateKeyKey": "key", "knownHostsKey": "hosts"},
            "dagsterPostgres": {"existingSecret": "pg-dagster", "passwordKey": "password"},
        },
        # Local-path mode on a claim managed outside the chart.
        "config": {"lake": {"root": "/data/lake"}},
        "persistence": {"enabled": True, "existingClaim": "lake-nfs"},
        "serviceAccount": {"create": True, "name": "platform-runs", "annotations": {"example.com/team": "data"}},
    },
    "alerts": {
        **MINIMAL,
        "config": {
            "lake": {"root": LAKE},
            "alerts": {
                "uiUrl": "https://dagster.acme.example",
                "smtp": {"host": "smtp.acme.example", "port": 2525, "starttls": False, "user": "medallion"},
                "email": {
                    "from": "Medallion <medallion@acme.example>",
                    "to": ["oncall@acme.example", "data@acme.example"],
                },
            },
        },
        "secrets": {
            "alerts": {
                "MEDALLION_ALERT_WEBHOOK_URL": {"key": "alert-webhook-url"},
                "MEDALLION_ALERT_SLACK_WEBHOOK_URL": {"key": "webhook-url", "secretName": "slack-alerts"},
                "MEDALLION_ALERT_SMTP_PASSWORD": {"key": "alert-smtp-password"},
            }
        },
    },
    "lean": {
        **MINIMAL,
        "persistence": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "migration": {"enabled": False},
        "webhookReceiver": {"podDisruptionBudget": {"enabled": False}},
        "config": {
            "lake": {"root": LAKE},
            "extraEnv": {"MEDALLION_LOG_LEVEL": "debug", "DBT_PROFILES_DIR": "/app/dbt_project"},
        },
    },
}
OBJECT_STORE_SETS = sorted(name for name, values in VALUE_SETS.items() if "://" in values["config"]["lake"]["root"])

K8S_VERSIONS = sorted(
    {v.rsplit(".", 1)[0] for v in kubernetes_validate.all_versions()},
    key=lambda v: tuple(int(p) for p in v.split(".")),
)

# Volume types the "restricted" Pod Security Standard allows.
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|HMAC|INBOX_URL|REVERSE_ETL_URL|ALERT_.*WEBHOOK_URL|CREDENTIAL")
# The alert channels that are secrets: webhook URLs carry tokens, and the SMTP password.
ALERT_SECRETS = {"MEDALLION_ALERT_WEBHOOK_URL", "MEDALLION_ALERT_SLACK_WEBHOOK_URL", "MEDALLION_ALERT_SMTP_PASSWORD"}


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chart_dir(repo_root: Path) -> Path:
    return repo_root / "helm" / "medallion"


@pytest.fixture(scope="session")
def chart(chart_dir: Path) -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(chart_dir) as loaded:
        yield loaded


def merged(extra: dict[str, Any], base: dict[str, Any] = MINIMAL) -> dict[str, Any]:
    """`base` with `extra` merged in, as Helm merges values: maps key by key, anything else replaced."""
    result = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(value, result[key])
        else:
            result[key] = copy.deepcopy(value)
    return result


def render(chart: helm_python.Chart, values: dict[str, Any]) -> dict[str, str]:
    return chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every non-empty YAML document of the rendered templates (NOTES.txt is not a manifest)."""
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, got {[d['metadata']['name'] for d in by_kind(docs, kind)]}"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def assert_restricted(where: str, pod: dict[str, Any]) -> None:
    """The Kubernetes "restricted" Pod Security Standard, plus the platform's own rules."""
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), where
    pod_sc = pod.get("securityContext", {})
    assert pod_sc.get("runAsNonRoot") is True, where
    assert pod_sc.get("runAsUser", 1) != 0, where
    assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for volume in volumes.values():
        kinds = set(volume) - {"name"}
        assert kinds <= RESTRICTED_VOLUME_TYPES, f"{where}: volume {volume['name']} is {kinds}"
    for container in pod.get("initContainers", []) + pod["containers"]:
        name = f"{where}:{container['name']}"
        sc = container.get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False, name
        assert sc.get("readOnlyRootFilesystem") is True, name
        assert not sc.get("privileged"), name
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), name
        assert set(sc.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, name
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, name
        assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, name
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        assert seccomp.get("type") in {"RuntimeDefault", "Localhost"}, name
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{name}: {bound} incomplete"
        # Read-only root: /tmp must be a writable emptyDir.
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]], f"{name}: no emptyDir /tmp"
        # Secrets reach containers by reference only.
        for var in container.get("env", []):
            if SECRETISH.search(var["name"]):
                assert "value" not in var, f"{name}: {var['name']} has an inline value"
                assert "secretKeyRef" in var.get("valueFrom", {}), f"{name}: {var['name']} not from a Secret"


def run_pod_job(deployment: dict[str, Any]) -> dict[str, Any]:
    """The Job dagster-k8s builds for a run of this code location (as the K8sRunLauncher does)."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    context = K8sContainerContext.create_from_config(json.loads(env["DAGSTER_CONTAINER_CONTEXT"]["value"]))
    job_config = DagsterK8sJobConfig(
        job_image=env["DAGSTER_CURRENT_IMAGE"]["value"],
        dagster_home="/opt/dagster/dagster_home",
        instance_config_map="dagster-instance",
        postgres_password_secret="dagster-postgresql-secret",
    )
    job = construct_dagster_k8s_job(
        job_config,
        ["dagster", "api", "execute_run", "{}"],
        "dagster-run-0123456789abcdef",
        user_defined_k8s_config=context.run_k8s_config,
        component="run_worker",
    )
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)


# --------------------------------------------------------------------------------------------------
# chart-level checks
# --------------------------------------------------------------------------------------------------


def test_chart_lints_clean(chart_dir: Path) -> None:
    report = helm_python.lint(chart_dir, MINIMAL, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_values_yaml_documents_every_section_and_matches_its_schema(chart_dir: Path) -> None:
    schema = json.loads((chart_dir / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    values = yaml.safe_load((chart_dir / "values.yaml").read_text())
    # The two values without a default: where the image and the lake are.
    assert values["image"]["tag"] == "" and values["config"]["lake"]["root"] == ""
    values["image"]["tag"] = TAG
    values["config"]["lake"]["root"] = LAKE
    jsonschema.Draft7Validator(schema).validate(values)
    # With a bucket URI, no claim by default.
    assert values["persistence"]["enabled"] is False
    assert schema["additionalProperties"] is False
    text = (chart_dir / "values.yaml").read_text()
    for section in values:
        if section in {"nameOverride", "fullnameOverride"}:
            continue
        line = text.index(f"\n{section}:")
        assert text[:line].rstrip().splitlines()[-1].lstrip().startswith("#"), f"{section} is not commented"


def test_templates_are_named_by_kind(chart_dir: Path, chart: helm_python.Chart) -> None:
    prefixes = {
        "ConfigMap": "configmap",
        "Deployment": "deployment-",
        "Service": "service-",
        "ServiceAccount": "serviceaccount-",
        "Role": "role-",
        "RoleBinding": "rolebinding-",
        "Ingress": "ingress-",
        "HorizontalPodAutoscaler": "hpa-",
        "PodDisruptionBudget": "pdb-",
        "NetworkPolicy": "networkpolicy-",
        "Job": "job-",
        "PersistentVolumeClaim": "persistentvolumeclaim-",
    }
    values = copy.deepcopy(VALUE_SETS["ingress-tls"])
    values["webhookReceiver"]["autoscaling"] = {"enabled": True}
    values.update(config=VALUE_SETS["local-path"]["config"], persistence=VALUE_SETS["local-path"]["persistence"])
    seen = set()
    for path, text in render(chart, values).items():
        for doc in (d for d in yaml.safe_load_all(text) if d) if path.endswith(".yaml") else []:
            assert Path(path).name.startswith(prefixes[doc["kind"]]), f"{path} holds a {doc['kind']}"
            seen.add(doc["kind"])
    assert seen == set(prefixes)
    assert (chart_dir / "templates" / "_helpers.tpl").is_file()


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ({}, "image tag is required"),
        ({"image": {"tag": ""}}, "empty tag"),
        ({"image": {"tag": "latest"}}, "latest tag"),
        ({"image": {"tag": TAG, "pullPolicy": "Sometimes"}}, "pull policy"),
        (merged({"replicas": 3}), "unknown top-level key"),
        (merged({"webhookReceiver": {"replicas": 3}}), "unknown nested key"),
        (merged({"userCode": {"resources": {"requests": {"memory": None}}}}), "requests without memory"),
        (merged({"webhookReceiver": {"resources": {"limits": None}}}), "no limits"),
        (merged({"webhookReceiver": {"replicaCount": 0}}), "zero replicas"),
        (merged({"webhookReceiver": {"workers": 0}}), "zero receiver workers"),
        (
            merged({"webhookReceiver": {"ingress": {"enabled": True, "tls": {"enabled": True}}}}),
            "TLS without secret",
        ),
        (
            merged({"secrets": {"userCode": {"MEDALLION_PII_HMAC_KEY": {"key": "k", "value": SENTINEL}}}}),
            "secret value",
        ),
        (merged({"secrets": {"dagsterPostgres": {"password": SENTINEL}}}), "postgres password"),
        (merged({"secrets": {"sftp": {"privateKey": SENTINEL}}}), "inline private key"),
        (merged({"config": {"extraEnv": {"MEDALLION_PII_HMAC_KEY": SENTINEL}}}), "secret in ConfigMap"),
        (merged({"config": {"extraEnv": {"DB_PASSWORD": SENTINEL}}}), "password in ConfigMap"),
        (merged({"secrets": {"webhookReceiver": {"lower_case": {"key": "k"}}}}), "bad variable name"),
        ({"image": {"tag": TAG}}, "no lake root"),
        (merged({"config": {"lakeRoot": "/data/lake"}}), "the old lakeRoot key"),
        (merged({"config": {"warehousePath": "/data/warehouse.duckdb"}}), "the shared warehouse file"),
        (merged({"secrets": {"googleCredentials": {"value": SENTINEL}}}), "inline Google key"),
        (merged({"config": {"extraEnv": {"AWS_SECRET_ACCESS_KEY": SENTINEL}}}), "lake secret in ConfigMap"),
        (merged({"config": {"extraEnv": {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"}}}), "lake key id in ConfigMap"),
        (merged({"config": {"extraEnv": {"AWS_ENDPOINT_URL": "http://x"}}}), "lake setting outside config.lake"),
        (merged({"config": {"lake": {"s3": {"endpointUrl": "http://minio:9000"}}}}), "HTTP endpoint not allowed"),
        (
            merged({"config": {"lake": {"s3": {"endpointUrl": "https://minio:9000", "allowHttp": True}}}}),
            "HTTP allowed for an HTTPS endpoint",
        ),
        (
            merged({"config": {"lake": {"s3": {"endpointUrl": f"https://admin:{SENTINEL}@minio:9000"}}}}),
            "credentials in the endpoint",
        ),
        (merged({"config": {"lake": {"root": "az://lake/medallion"}}}), "az:// without a storage account"),
        (merged({"config": {"lake": {"s3": {"copyIfNotExists": "always"}}}}), "unknown copy-if-not-exists mode"),
        (
            merged({"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "medallion-lake"}}}),
            "IRSA annotation that names no role",
        ),
        (
            merged({"serviceAccount": {"annotations": {"iam.gke.io/gcp-service-account": "medallion-lake"}}}),
            "GKE annotation that names no service account",
        ),
        (
            merged({"serviceAccount": {"annotations": {"azure.workload.identity/client-id": "my-identity"}}}),
            "Azure annotation that is no client id",
        ),
        (merged({"serviceAccount": {"annotations": {"not a key": "x"}}}), "invalid annotation key"),
        (merged({"config": {"alerts": {"smtp": {"port": "587"}}}}), "SMTP port as a string"),
        (merged({"config": {"alerts": {"smtp": {"port": 587.5}}}}), "SMTP port not an integer"),
        (merged({"config": {"alerts": {"smtp": {"port": 0}}}}), "SMTP port out of range"),
        (merged({"config": {"alerts": {"smtp": {"starttls": "yes"}}}}), "STARTTLS not a boolean"),
        (merged({"config": {"alerts": {"smtp": {"password": SENTINEL}}}}), "SMTP password in config"),
        (merged({"config": {"alerts": {"webhookUrl": f"https://hooks.example.com/{SENTINEL}"}}}), "webhook in config"),
        (
            merged({"config": {"alerts": {"uiUrl": f"https://admin:{SENTINEL}@dagster.example.com"}}}),
            "credentials in the UI URL",
        ),
        (
            merged({"config": {"alerts": {"smtp": {"host": "smtp.example.com"}, "email": {"from": "m@example.com"}}}}),
            "SMTP host without recipients",
        ),
        (
            merged({"config": {"alerts": {"smtp": {"host": "smtp.example.com"}, "email": {"to": ["a@example.com"]}}}}),
            "SMTP host without a sender",
        ),
        (merged({"config": {"alerts": {"email": {"to": ["a@example.com"]}}}}), "recipients without an SMTP host"),
        (merged({"config": {"alerts": {"email": {"to": "a@example.com, b@example.com"}}}}), "recipients not a list"),
        (merged({"config": {"alerts": {"email": {"to": ["on call"]}}}}), "recipient that is no address"),
        (
            merged({"secrets": {"alerts": {"MEDALLION_ALERT_WEBHOOK_URL": {"key": "k", "value": SENTINEL}}}}),
            "alert webhook value",
        ),
        (merged({"secrets": {"alerts": {"MEDALLION_ALERT_SMTP_HOST": {"key": "k"}}}}), "non-secret alert setting"),
        (
            merged({"secrets": {"userCode": {"MEDALLION_ALERT_SLACK_WEBHOOK_URL": {"key": "k"}}}}),
            "alert secret outside secrets.alerts",
        ),
        (
            merged({"config": {"extraEnv": {"MEDALLION_ALERT_WEBHOOK_URL": f"https://x/{SENTINEL}"}}}),
            "alert webhook in ConfigMap",
        ),
        (
            merged({"config": {"extraEnv": {"MEDALLION_ALERT_SMTP_HOST": "smtp"}}}),
            "alert setting outside config.alerts",
        ),
        (merged({"config": {"extraEnv": {"MEDALLION_DAGSTER_UI_URL": "http://x"}}}), "UI URL outside config.alerts"),
        (merged({"serviceAccount": {"annotations": {"example.com/replicas": 3}}}), "annotation value not a string"),
    ],
)
def test_schema_rejects_bad_values(chart: helm_python.Chart, bad: dict[str, Any], why: str) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema(bad)
    # Rendering validates too, so none of these ever reaches a cluster.
    with pytest.raises(helm_python.HelmError):
        render(chart, bad)


def test_secret_values_are_never_rendered(chart: helm_python.Chart) -> None:
    # `global` is free-form (umbrella charts share it): the chart must simply ignore it.
    values = {
        **MINIMAL,
        "global": {"postgresql": {"password": SENTINEL}, "secrets": {"MEDALLION_PII_HMAC_KEY": SENTINEL}},
    }
    rendered = render(chart, values)
    assert all(SENTINEL not in text for text in rendered.values())
    assert by_kind(manifests(rendered), "Secret") == []


# --------------------------------------------------------------------------------------------------
# every values set: schema-valid manifests that keep the policies
# --------------------------------------------------------------------------------------------------


@pytest.fixture(params=sorted(VALUE_SETS), scope="module")
def rendered_set(request: pytest.FixtureRequest, chart: helm_python.Chart) -> tuple[str, list[dict[str, Any]]]:
    return request.param, manifests(render(chart, VALUE_SETS[request.param]))


def test_manifests_validate_strictly_on_every_kubernetes_version(
    rendered_set: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered_set
    assert docs
    failures = []
    for doc in docs:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
                failures.append(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {exc}")
    assert failures == []


def test_strict_validation_catches_a_broken_manifest(rendered_set: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered_set
    broken = copy.deepcopy(by_kind(docs, "Deployment")[0])
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_pods_follow_the_restricted_profile(rendered_set: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered_set
    specs = dict(pod_specs(docs))
    expected = {f"Deployment/{RELEASE}-user-code", f"Deployment/{RELEASE}-webhook-receiver"}
    if name != "lean":
        expected.add(f"Job/{RELEASE}-webhooks-migrate")
    assert set(specs) == expected
    for where, pod in specs.items():
        assert_restricted(where, pod)


def test_run_pods_launched_for_the_code_location_follow_the_same_policies(
    rendered_set: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered_set
    deployment = one(docs, "Deployment", f"{RELEASE}-user-code")
    job = run_pod_job(deployment)
    for version in (K8S_VERSIONS[0], K8S_VERSIONS[-1]):
        kubernetes_validate.validate(job, version, strict=True)
    pod = job["spec"]["template"]["spec"]
    # The instance ConfigMap is mounted by the launcher at launch time, not by the job builder.
    assert_restricted("run pod", pod)
    container = pod["containers"][0]
    assert container["image"] == IMAGE
    assert container["envFrom"] == [{"configMapRef": {"name": f"{RELEASE}-config"}}]
    assert "DAGSTER_PG_PASSWORD" in env_of(container)
    code_server = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == code_server["serviceAccountName"]
    # The code server's volumes, but its own instance config (the launcher mounts that).
    server_mounts = {m["mountPath"] for m in code_server["containers"][0]["volumeMounts"]}
    assert {m["mountPath"] for m in container["volumeMounts"]} == server_mounts - {"/opt/dagster/dagster_home"}
    assert {"/tmp", "/data", "/etc/medallion/sftp"} <= server_mounts
    server_volumes = {v["name"]: v for v in code_server["volumes"]}
    for volume in pod["volumes"]:
        if volume["name"] != "tmp":
            assert volume == server_volumes[volume["name"]], volume["name"]
    code_server_secrets = {k: v for k, v in env_of(code_server["containers"][0]).items() if "valueFrom" in v}
    code_server_secrets.pop("DAGSTER_PG_PASSWORD")
    # Alerts are sent by the code server's sensors; a run never needs the channels' tokens.
    assert not ALERT_SECRETS & set(env_of(container))
    code_server_secrets = {k: v for k, v in code_server_secrets.items() if k not in ALERT_SECRETS}
    assert {k: v for k, v in env_of(container).items() if k in code_server_secrets} == code_server_secrets
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400


def test_images_are_the_pinned_platform_image(rendered_set: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered_set
    for where, pod in pod_specs(docs):
        for container in pod["containers"]:
            assert container["image"] == IMAGE, where
            assert not container["image"].endswith(":latest")


def test_no_secret_material_is_rendered(rendered_set: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered_set
    assert by_kind(docs, "Secret") == []
    config = one(docs, "ConfigMap", f"{RELEASE}-config")
    # Only paths to mounted Secret files may carry a secret-looking name.
    for key, value in config["data"].items():
        if SECRETISH.search(key):
            assert value.startswith("/etc/medallion/"), f"ConfigMap holds {key}"
    values = VALUE_SETS[name]
    for where, pod in pod_specs(docs):
        for container in pod["containers"]:
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert set(ref) <= {"name", "key", "optional"}, where
    if name == "external-secrets":
        receiver = one(docs, "Deployment", f"{RELEASE}-webhook-receiver")["spec"]["template"]["spec"]
        inbox = env_of(receiver["containers"][0])["MEDALLION_WEBHOOK_INBOX_URL"]["valueFrom"]["secretKeyRef"]
        assert inbox == {"name": "inbox-db", "key": "url"}
        stripe = env_of(receiver["containers"][0])["MEDALLION_WEBHOOK_SECRETS_STRIPE"]["valueFrom"]["secretKeyRef"]
        assert stripe["name"] == values["secrets"]["existingSecret"]
        volumes = {
            v["name"]: v for v in one(docs, "Deployment", f"{RELEASE}-user-code")["spec"]["template"]["spec"]["volumes"]
        }
        assert volumes["sftp-keys"]["secret"]["secretName"] == "partner-sftp"
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "lake-nfs"
        assert by_kind(docs, "PersistentVolumeClaim") == []


# --------------------------------------------------------------------------------------------------
# the workloads
# --------------------------------------------------------------------------------------------------


def test_user_code_serves_the_definitions_over_grpc_with_health_probes(chart: helm_python.Chart) -> None:
    docs = manifests(render(chart, MINIMAL))
    deployment = one(docs, "Deployment", f"{RELEASE}-user-code")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == [
        "dagster",
        "api",
        "grpc",
        "-h",
        "0.0.0.0",
        "-p",
        "3030",
        "-m",
        "dagster_project.definitions",
    ]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": 3030, "service": "DagsterApi"}, probe
    env = env_of(container)
    assert env["DAGSTER_CURRENT_IMAGE"]["value"] == IMAGE
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "dagster-postgresql-secret",
        "key": "postgresql-password",
    }
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/opt/dagster/dagster_home"]["readOnly"] is True
    service = one(docs, "Service", f"{RELEASE}-user-code")
    assert service["spec"]["ports"] == [{"name": "grpc", "port": 3030, "targetPort": "grpc", "protocol": "TCP"}]


def test_webhook_receiver_serves_http_with_health_and_readiness(chart: helm_python.Chart) -> None:
    docs = manifests(render(chart, MINIMAL))
    deployment = one(docs, "Deployment", f"{RELEASE}-webhook-receiver")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["medallion", "webhooks", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert pod["automountServiceAccountToken"] is False
    assert deployment["spec"]["replicas"] == 2
    assert set(env_of(container)) == {
        "MEDALLION_WEBHOOK_WORKERS",
        "MEDALLION_WEBHOOK_INBOX_URL",
        "MEDALLION_WEBHOOK_SECRETS_STRIPE",
        "MEDALLION_WEBHOOK_SECRETS_SHOP",
    }
    # one worker process per pod by default: its CPU limit is half a core
    assert env_of(container)["MEDALLION_WEBHOOK_WORKERS"] == {"name": "MEDALLION_WEBHOOK_WORKERS", "value": "1"}
    assert container["resources"]["limits"]["cpu"] == "500m"
    pdb = one(docs, "PodDisruptionBudget", f"{RELEASE}-webhook-receiver")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert by_kind(docs, "Ingress") == [] and by_kind(docs, "HorizontalPodAutoscaler") == []


def test_receiver_worker_processes_follow_the_values(chart: helm_python.Chart, monkeypatch: pytest.MonkeyPatch) -> None:
    values = merged({"webhookReceiver": {"workers": 2, "resources": {"limits": {"cpu": "2", "memory": "1Gi"}}}})
    docs = manifests(render(chart, values))
    container = one(docs, "Deployment", f"{RELEASE}-webhook-receiver")["spec"]["template"]["spec"]["containers"][0]
    monkeypatch.setenv("MEDALLION_WEBHOOK_WORKERS", env_of(container)["MEDALLION_WEBHOOK_WORKERS"]["value"])
    from dagster_project import settings

    assert settings.webhook_workers() == 2


def test_ingress_terminates_tls_for_the_receiver(chart: helm_python.Chart) -> None:
    docs = manifests(render(chart, VALUE_SETS["ingress-tls"]))
    ingress = one(docs, "Ingress", f"{RELEASE}-webhook-receiver")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": ["hooks.acme.example"], "secretName": "hooks-acme-example-tls"}]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{RELEASE}-webhook-receiver", "port": {"name": "http"}}
    one(docs, "Service", backend["name"])


def test_hpa_owns_the_receiver_replica_count(chart: helm_python.Chart) -> None:
    docs = manifests(render(chart, VALUE_SETS["hpa"]))
    deployment = one(docs, "Deployment", f"{RELEASE}-webhook-receiver")
    assert "replicas" not in deployment["spec"]
    hpa = one(docs, "HorizontalPodAutoscaler", f"{RELEASE}-webhook-receiver")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook(chart: helm_python.Chart) -> None:
    docs = manifests(render(chart, MINIMAL))
    job = one(docs, "Job", f"{RELEASE}-webhooks-migrate")
    hooks = set(job["metadata"]["annotations"]["helm.sh/hook"].split(","))
    assert hooks == {"pre-install", "pre-upgrade"}
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    # It runs before the release's ServiceAccount and ConfigMap exist.
    assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["args"] == ["medallion", "webhooks", "migrate"]
    assert "envFrom" not in container
    assert env_of(container)["MEDALLION_WEBHOOK_INBOX_URL"]["valueFrom"]["secretKeyRef"]["key"] == "webhook-inbox-url"


def test_runs_may_launch_step_jobs_and_nothing_more(chart: helm_python.Chart) -> None:
    docs = manifests(render(chart, MINIMAL))
    role = one(docs, "Role", f"{RELEASE}-runs")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules[(("batch",), ("jobs",))] >= {"create", "get", "list", "watch", "delete"}
    for (_, resources), verbs in rules.items():
        assert "secrets" not in resources and "*" not in verbs and "*" not in resources
    binding = one(docs, "RoleBinding", f"{RELEASE}-runs")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{RELEASE}-runs", "namespace": NAMESPACE}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_network_policies_open_only_the_service_ports(chart: helm_python.Chart) -> None:
    docs = manifests(render(chart, MINIMAL))
    user_code = one(docs, "NetworkPolicy", f"{RELEASE}-user-code")
    [rule] = user_code["spec"]["ingress"]
    assert rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app": "dagster"}}}]
    receiver = one(docs, "NetworkPolicy", f"{RELEASE}-webhook-receiver")
    [rule] = receiver["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    for policy in (user_code, receiver):
        component = policy["metadata"]["labels"]["app.kubernetes.io/component"]
        deployment = one(docs, "Deployment", f"{RELEASE}-{component}")
        assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_config_map_carries_the_platform_settings(chart: helm_python.Chart) -> None:
    docs = manifests(render(chart, VALUE_SETS["lean"]))
    data = one(docs, "ConfigMap", f"{RELEASE}-config")["data"]
    assert data["MEDALLION_LAKE_ROOT"] == LAKE
    assert "MEDALLION_WAREHOUSE_PATH" not in data
    assert data["MEDALLION_SFTP_KNOWN_HOSTS"] == "/etc/medallion/sftp/known_hosts"
    assert data["MEDALLION_LOG_LEVEL"] == "debug"
    assert all(isinstance(v, str) for v in data.values())


def test_the_receivers_limits_follow_the_values(chart: helm_python.Chart, monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"maxHeaderBytes": 8192, "maxHeaderCount": 50, "headerTimeoutSeconds": 5, "bodyTimeoutSeconds": 7.5}
    docs = manifests(render(chart, merged({"config": {"webhooks": limits}})))
    deployment = one(docs, "Deployment", f"{RELEASE}-webhook-receiver")
    [source] = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    config_map = one(docs, "ConfigMap", source["configMapRef"]["name"])
    for name, value in config_map["data"].items():
        monkeypatch.setenv(name, value)
    from dagster_project import settings

    assert (
        settings.webhook_max_header_bytes(),
        settings.webhook_max_header_count(),
        settings.webhook_header_timeout_seconds(),
        settings.webhook_body_timeout_seconds(),
    ) == (8192, 50, 5.0, 7.5)


# --------------------------------------------------------------------------------------------------
# alerts: the settings in the ConfigMap, the channels' tokens and password by Secret reference
# --------------------------------------------------------------------------------------------------


def settings_env_of(docs: list[dict[str, Any]], secret_values: dict[str, str]) -> dict[str, str]:
    """The code server's environment as the kubelet builds it: the ConfigMap, then env (Secrets resolved)."""
    data = dict(one(docs, "ConfigMap", f"{RELEASE}-config")["data"])
    container = one(docs, "Deployment", f"{RELEASE}-user-code")["spec"]["template"]["spec"]["containers"][0]
    for var in container["env"]:
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            data[var["name"]] = secret_values[f"{ref['name']}/{ref['key']}"]
    return data


def test_alert_urls_and_password_reach_only_the_code_server_and_only_as_secret_references(
    chart: helm_python.Chart,
) -> None:
    rendered = render(chart, VALUE_SETS["alerts"])
    docs = manifests(rendered)
    container = one(docs, "Deployment", f"{RELEASE}-user-code")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert {name: env[name] for name in ALERT_SECRETS} == {
        "MEDALLION_ALERT_WEBHOOK_URL": {
            "name": "MEDALLION_ALERT_WEBHOOK_URL",
            "valueFrom": {"secretKeyRef": {"name": "medallion", "key": "alert-webhook-url"}},
        },
        "MEDALLION_ALERT_SLACK_WEBHOOK_URL": {
            "name": "MEDALLION_ALERT_SLACK_WEBHOOK_URL",
            "valueFrom": {"secretKeyRef": {"name": "slack-alerts", "key": "webhook-url"}},
        },
        "MEDALLION_ALERT_SMTP_PASSWORD": {
            "name": "MEDALLION_ALERT_SMTP_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "medallion", "key": "alert-smtp-password"}},
        },
    }
    # Named nowhere else in the release: not in the ConfigMap, not in the run pods' container context,
    # not in the receiver or the migration Job.
    text = "\n".join(rendered.values())
    for name in ALERT_SECRETS:
        assert text.count(name) == 1, f"{name} is rendered outside the code server's secretKeyRef"
    data = one(docs, "ConfigMap", f"{RELEASE}-config")["data"]
    assert not {k for k in data if k.startswith("MEDALLION_ALERT_") and SECRETISH.search(k)}


def test_the_platform_reads_the_rendered_alert_settings_as_the_chart_meant(
    chart: helm_python.Chart, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster_project import settings

    docs = manifests(render(chart, VALUE_SETS["alerts"]))
    environment = settings_env_of(
        docs,
        {
            "medallion/alert-webhook-url": "https://alerts.acme.example/hooks/medallion",
            "slack-alerts/webhook-url": "https://hooks.slack.com/services/T0/B0/x",
            "medallion/alert-smtp-password": "smtp-password",
            "medallion/airbyte-client-id": "",
            "medallion/airbyte-client-secret": "",
            "medallion/pii-hmac-key": "k" * 64,
            "medallion/reverse-etl-url": "postgresql+psycopg2://u:p@db/crm",
            "medallion/webhook-inbox-url": "postgresql+psycopg2://u:p@db/inbox",
            "dagster-postgresql-secret/postgresql-password": "p",
        },
    )
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    assert settings.alert_channels() == ["webhook", "slack", "email"]
    email = settings.alert_email()
    assert email == settings.AlertEmailSettings(
        host="smtp.acme.example",
        port=2525,
        username="medallion",
        starttls=False,
        sender="Medallion <medallion@acme.example>",
        recipients=("oncall@acme.example", "data@acme.example"),
    )
    assert settings.dagster_ui_url() == "https://dagster.acme.example"


def test_alerts_are_off_by_default_and_the_notes_say_how_to_turn_them_on(
    chart: helm_python.Chart, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster_project import settings

    rendered = render(chart, MINIMAL)
    docs = manifests(rendered)
    container = one(docs, "Deployment", f"{RELEASE}-user-code")["spec"]["template"]["spec"]["containers"][0]
    assert not ALERT_SECRETS & set(env_of(container))
    for variable in (*ALERT_SECRETS, "MEDALLION_DAGSTER_UI_URL"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in one(docs, "ConfigMap", f"{RELEASE}-config")["data"].items():
        monkeypatch.setenv(variable, value)
    assert settings.alert_channels() == []
    [notes] = [text for path, text in rendered.items() if path.endswith("NOTES.txt")]
    assert "Alerts (failed runs and checks, overdue assets): off" in notes
    [notes] = [text for path, text in render(chart, VALUE_SETS["alerts"]).items() if path.endswith("NOTES.txt")]
    assert "Alerts (failed runs and checks, overdue assets): sent to webhook, slack, email" in notes


def test_policy_check_catches_a_non_compliant_pod(chart: helm_python.Chart) -> None:
    docs = manifests(render(chart, MINIMAL))
    pod = one(docs, "Deployment", f"{RELEASE}-webhook-receiver")["spec"]["template"]["spec"]
    for breach in (
        lambda p: p["containers"][0]["securityContext"].update(readOnlyRootFilesystem=False),
        lambda p: p["securityContext"].pop("seccompProfile"),
        lambda p: p["containers"][0]["resources"].pop("limits"),
        lambda p: p["containers"][0]["env"].append({"name": "DB_PASSWORD", "value": SENTINEL}),
        lambda p: p["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
    ):
        broken = copy.deepcopy(pod)
        breach(broken)
        with pytest.raises(AssertionError):
            assert_restricted("broken", broken)


# --------------------------------------------------------------------------------------------------
# the lake: a bucket URI and workload identity, or a claim in local-path mode
# --------------------------------------------------------------------------------------------------


def pods_that_open_the_lake(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The code server's pod and the pod of a run it launches (step pods share the run's context)."""
    deployment = one(docs, "Deployment", f"{RELEASE}-user-code")
    return {
        "code server": deployment["spec"]["template"],
        "run pod": run_pod_job(deployment)["spec"]["template"],
    }


@pytest.mark.parametrize("name", OBJECT_STORE_SETS)
def test_an_object_store_lake_needs_no_volume_claim(chart: helm_python.Chart, name: str) -> None:
    docs = manifests(render(chart, VALUE_SETS[name]))
    assert by_kind(docs, "PersistentVolumeClaim") == []
    for where, pod in pods_that_open_the_lake(docs).items():
        volumes = pod["spec"]["volumes"]
        assert not [v for v in volumes if "persistentVolumeClaim" in v], where
        # dataDir is scratch, private to the pod.
        assert {"name": "data", "emptyDir": {}} in volumes, where
    data = one(docs, "ConfigMap", f"{RELEASE}-config")["data"]
    assert data["MEDALLION_LAKE_ROOT"] == VALUE_SETS[name]["config"]["lake"]["root"]


@pytest.mark.parametrize("name", OBJECT_STORE_SETS)
def test_the_platform_reads_the_rendered_lake_settings_as_the_chart_meant(
    chart: helm_python.Chart, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster_project import settings

    lake_values = VALUE_SETS[name]["config"]["lake"]
    data = one(manifests(render(chart, VALUE_SETS[name])), "ConfigMap", f"{RELEASE}-config")["data"]
    for variable in (*settings.LAKE_STORAGE_VARIABLES, "MEDALLION_LAKE_ROOT"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in data.items():
        monkeypatch.setenv(variable, value)
    lake = settings.lake()
    assert lake.root == lake_values["root"]
    assert lake.family == {"s3": "s3", "gs": "gs", "az": "az"}[lake_values["root"].split(":")[0]]
    options = settings.lake_storage_options()
    s3 = lake_values.get("s3", {})
    assert options.get("AWS_ENDPOINT_URL") == (s3.get("endpointUrl") or None)
    assert options.get("AWS_ALLOW_HTTP") == ("true" if s3.get("allowHttp") else None)
    assert data.get("AWS_COPY_IF_NOT_EXISTS") == (s3.get("copyIfNotExists") or None)
    if "azure" in lake_values:
        assert options["AZURE_STORAGE_ACCOUNT_NAME"] == lake_values["azure"]["storageAccountName"]


def test_the_platform_reads_the_rendered_retention_settings_as_the_chart_meant(
    chart: helm_python.Chart, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster_project import settings

    values = {**VALUE_SETS["lean"], "config": {**VALUE_SETS["lean"]["config"], "retention": {"quarantineDays": 30}}}
    data = one(manifests(render(chart, values)), "ConfigMap", f"{RELEASE}-config")["data"]
    for variable, value in data.items():
        monkeypatch.setenv(variable, value)
    # The chart's defaults are the platform's, landing kept for ever; one value changed reaches the runs.
    assert settings.retention() == settings.RetentionSettings(
        landing_days=None,
        quarantine_days=30,
        delta_versions_hours=168,
        run_history_days=30,
        sftp_archive_days=30,
        sftp_quarantine_days=90,
        uploads_hours=24,
        cron="30 3 * * *",
    )


def test_local_path_mode_mounts_its_claim_in_every_pod_that_opens_the_lake(chart: helm_python.Chart) -> None:
    docs = manifests(render(chart, VALUE_SETS["local-path"]))
    [claim] = by_kind(docs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "nfs-client"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for where, pod in pods_that_open_the_lake(docs).items():
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}, where
        mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
        assert mounts["data"] == "/data", where
    assert one(docs, "ConfigMap", f"{RELEASE}-config")["data"]["MEDALLION_LAKE_ROOT"] == "/data/lake"
    # The receiver never opens the lake: no claim there.
    receiver = one(docs, "Deployment", f"{RELEASE}-webhook-receiver")["spec"]["template"]["spec"]
    assert [v["name"] for v in receiver["volumes"]] == ["tmp"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (merged({"config": {"lake": {"root": "/data/lake"}}}), "persistence.enabled is false"),
        (
            merged({"config": {"lake": {"root": "/srv/lake"}}, "persistence": {"enabled": True}}),
            "outside config.dataDir",
        ),
    ],
)
def test_a_local_lake_the_pods_would_lose_is_refused_with_the_fix(
    chart: helm_python.Chart, values: dict[str, Any], message: str
) -> None:
    chart.validate_schema(values)
    with pytest.raises(helm_python.HelmError, match=message):
        render(chart, values)


LAKE_ROOTS_ACCEPTED = [
    "s3://acme-lake/medallion",
    "s3://acme.lake-2025",
    "s3://acme-lake/medallion/prod/",
    "gs://acme_lake/medallion",
    "az://lake/medallion",
    "abfss://lake/medallion",
    "/data/lake",
]
LAKE_ROOTS_REFUSED = [
    "",
    "data/lake",
    "./lake",
    "/data/../etc/lake",
    "s3:/acme-lake/medallion",
    "s3://acme-lake//medallion",
    "s3://acme-lake/../medallion",
    f"s3://AKIAEXAMPLE:{SENTINEL}@acme-lake/medallion",
    f"s3://acme-lake/medallion?secret={SENTINEL}",
    "s3://Acme_Lake/medallion",
    "s3://ab/medallion",
    "s3://acme-lake/with space",
    "hdfs://namenode/lake",
    "file:///data/lake",
    "abfss://lake@acmelake.dfs.core.windows.net/medallion",
]


def lake_values(root: str) -> dict[str, Any]:
    lake: dict[str, Any] = {"root": root}
    if root.startswith(("az://", "abfs")):
        lake["azure"] = {"storageAccountName": "acmelake"}
    return merged({"config": {"lake": lake}, "persistence": {"enabled": root.startswith("/")}})


@pytest.mark.parametrize("root", LAKE_ROOTS_ACCEPTED)
def test_schema_accepts_lake_roots_the_platform_can_use(chart: helm_python.Chart, root: str) -> None:
    from dagster_project.lib.lake import Lake

    chart.validate_schema(lake_values(root))
    data = one(manifests(render(chart, lake_values(root))), "ConfigMap", f"{RELEASE}-config")["data"]
    assert Lake.parse(data["MEDALLION_LAKE_ROOT"]).root == root.rstrip("/")


@pytest.mark.parametrize("root", LAKE_ROOTS_REFUSED)
def test_schema_refuses_a_lake_root_that_is_neither_a_bucket_uri_nor_a_path_on_the_volume(
    chart: helm_python.Chart, root: str
) -> None:
    with pytest.raises(helm_python.HelmValuesError) as refused:
        chart.validate_schema(lake_values(root))
    assert "/config/lake/root" in str(refused.value)


def test_workload_identity_reaches_the_code_server_and_every_run_pod(chart: helm_python.Chart) -> None:
    for name, annotation, value in (
        ("irsa", "eks.amazonaws.com/role-arn", IRSA_ROLE),
        ("azure-workload-identity", "azure.workload.identity/client-id", AZURE_CLIENT_ID),
    ):
        docs = manifests(render(chart, VALUE_SETS[name]))
        account = one(docs, "ServiceAccount", f"{RELEASE}-runs")
        assert account["metadata"]["annotations"] == {annotation: value}, name
        azure = annotation.startswith("azure.")
        for where, pod in pods_that_open_the_lake(docs).items():
            assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"], f"{name}: {where}"
            # The token must be there for the identity webhooks to project theirs.
            assert pod["spec"].get("automountServiceAccountToken") is not False, f"{name}: {where}"
            labels = pod["metadata"]["labels"]
            assert (labels.get("azure.workload.identity/use") == "true") is azure, f"{name}: {where}"
        # The receiver never opens the lake, and gets neither the identity nor its label.
        receiver = one(docs, "Deployment", f"{RELEASE}-webhook-receiver")["spec"]["template"]
        assert receiver["spec"]["serviceAccountName"] != account["metadata"]["name"]
        assert "azure.workload.identity/use" not in receiver["metadata"]["labels"]
        receiver_account = one(docs, "ServiceAccount", receiver["spec"]["serviceAccountName"])
        assert "annotations" not in receiver_account["metadata"]


def test_schema_accepts_the_workload_identity_annotations_of_each_cloud(chart: helm_python.Chart) -> None:
    for identity in (
        {"eks.amazonaws.com/role-arn": IRSA_ROLE, "eks.amazonaws.com/sts-regional-endpoints": "true"},
        {"eks.amazonaws.com/role-arn": "arn:aws-us-gov:iam::123456789012:role/path/medallion-lake"},
        {"iam.gke.io/gcp-service-account": "medallion-lake@acme-data-prod.iam.gserviceaccount.com"},
        {"azure.workload.identity/client-id": AZURE_CLIENT_ID, "azure.workload.identity/tenant-id": AZURE_CLIENT_ID},
    ):
        chart.validate_schema(merged({"serviceAccount": {"annotations": identity}}))


def test_static_lake_keys_come_from_a_secret_by_reference(chart: helm_python.Chart) -> None:
    docs = manifests(render(chart, VALUE_SETS["minio"]))
    data = one(docs, "ConfigMap", f"{RELEASE}-config")["data"]
    assert data["AWS_ENDPOINT_URL"] == "http://minio.storage.svc:9000"
    assert data["AWS_ALLOW_HTTP"] == "true" and data["AWS_REGION"] == "us-east-1"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(data)
    for where, pod in pods_that_open_the_lake(docs).items():
        env = env_of(pod["spec"]["containers"][0])
        for variable, key in (("AWS_ACCESS_KEY_ID", "access-key-id"), ("AWS_SECRET_ACCESS_KEY", "secret-access-key")):
            assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": "minio-lake", "key": key}, where
    receiver = one(docs, "Deployment", f"{RELEASE}-webhook-receiver")["spec"]["template"]["spec"]
    assert "AWS_SECRET_ACCESS_KEY" not in env_of(receiver["containers"][0])


def test_a_google_key_is_mounted_as_a_file_never_rendered(chart: helm_python.Chart) -> None:
    docs = manifests(render(chart, VALUE_SETS["gcs-key"]))
    data = one(docs, "ConfigMap", f"{RELEASE}-config")["data"]
    assert data["GOOGLE_APPLICATION_CREDENTIALS"] == "/etc/medallion/google/sa.json"
    for where, pod in pods_that_open_the_lake(docs).items():
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["google-credentials"]["secret"]["secretName"] == "lake-gcp", where
        assert volumes["google-credentials"]["secret"]["items"] == [{"key": "sa.json", "path": "sa.json"}], where
        mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
        assert mounts["google-credentials"]["mountPath"] == "/etc/medallion/google", where
        assert mounts["google-credentials"]["readOnly"] is True, where
    # Without the Secret: nothing mounted, nothing pointing at a missing file (workload identity).
    plain = manifests(render(chart, merged({"config": {"lake": {"root": "gs://acme-lake/medallion"}}})))
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in one(plain, "ConfigMap", f"{RELEASE}-config")["data"]
    for where, pod in pods_that_open_the_lake(plain).items():
        assert "google-credentials" not in {v["name"] for v in pod["spec"]["volumes"]}, where
