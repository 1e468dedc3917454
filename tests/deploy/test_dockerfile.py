"""The Dockerfile builds what the deployments expect. No Docker engine here: its steps are checked
by reading it and by running the two that matter (the locked install set, `dbt parse`) on this machine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY\b|HMAC|CREDENTIAL|INBOX_URL|REVERSE_ETL_URL")


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in dockerfile.splitlines() if not line.lstrip().startswith("#"))
    )
    parsed = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            parsed.append((keyword.upper(), " ".join(rest.split())))
    return parsed


@pytest.fixture(scope="module")
def steps(repo_root: Path) -> list[tuple[str, str]]:
    return instructions((repo_root / "Dockerfile").read_text())


def stages(steps: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    current = None
    for keyword, args in steps:
        if keyword == "FROM":
            current = args.split(" AS ")[-1] if " AS " in args else args
            found[current] = []
        elif current:
            found[current].append((keyword, args))
    return found


def test_multi_stage_build_with_pinned_bases(steps: list[tuple[str, str]]) -> None:
    by_stage = stages(steps)
    assert list(by_stage)[-1] == "runtime"
    assert "build" in by_stage
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    for keyword, value in steps:
        if keyword == "FROM":
            image = value.split(" AS ")[0]
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
            if image in by_stage:
                continue
            assert ":" in image and not image.endswith(":latest"), image


def test_dependencies_come_from_the_lock_without_dev_tools(steps: list[tuple[str, str]]) -> None:
    runs = [a for k, a in stages(steps)["build"] if k == "RUN"]
    syncs = [r for r in runs if "uv sync" in r]
    assert len(syncs) == 2
    for sync in syncs:
        assert "--locked" in sync and "--no-default-groups" in sync
    assert "--no-install-project" in syncs[0]
    # The runtime stage installs nothing from Python registries.
    runtime_runs = " ".join(a for k, a in stages(steps)["runtime"] if k == "RUN")
    assert "pip install" not in runtime_runs and "uv " not in runtime_runs


def test_locked_install_set_has_the_platform_and_no_test_tools(repo_root: Path, tmp_path: Path) -> None:
    uv = shutil.which("uv")
    assert uv, "uv is the project's installer and must be on PATH"
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy(repo_root / name, tmp_path / name)
    result = subprocess.run(
        [uv, "sync", "--locked", "--no-default-groups", "--no-install-project", "--dry-run"],
        cwd=tmp_path,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(tmp_path / ".venv"), "UV_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    plan = result.stdout + result.stderr
    for needed in ("dagster-webserver", "dagster-k8s", "dagster-postgres", "dbt-core", "uvicorn"):
        assert f" {needed}==" in plan, needed
    for dev_tool in ("pytest", "ruff", "playwright", "helm-python-sdk", "kubernetes-validate"):
        assert f" {dev_tool}==" not in plan, dev_tool


def test_dbt_manifest_is_built_at_image_build_time(
    repo_root: Path, tmp_path: Path, steps: list[tuple[str, str]]
) -> None:
    [parse] = [a for k, a in stages(steps)["build"] if k == "RUN" and "dbt parse" in a]
    assert "dbt parse --project-dir dbt_project --profiles-dir dbt_project" in parse
    assert "test -s dbt_project/target/manifest.json" in parse
    # Run the step as the image build does: only the variables it sets, none of them secret.
    build_env = dict(re.findall(r"(\w+)=(\S+)", parse.split("/app/.venv/bin/dbt")[0]))
    assert not [k for k in build_env if SECRETISH.search(k)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDALLION_", "DBT_"))}
    env.update({k: v.replace("/tmp/build", str(tmp_path)) for k, v in build_env.items()})
    # Keep the repository's own target/ untouched.
    env.update(DBT_TARGET_PATH=str(tmp_path / "target"), DBT_LOG_PATH=str(tmp_path / "logs"))
    dbt = Path(sys.executable).parent / "dbt"
    result = subprocess.run(
        [str(dbt), "parse", "--project-dir", "dbt_project", "--profiles-dir", "dbt_project"],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((tmp_path / "target" / "manifest.json").read_text())
    assert manifest["nodes"], "dbt parse produced an empty manifest"


def test_runs_as_the_unprivileged_user_the_chart_expects(repo_root: Path, steps: list[tuple[str, str]]) -> None:
    runtime = stages(steps)["runtime"]
    [user] = [a for k, a in runtime if k == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    helpers = (repo_root / "helm" / "medallion" / "templates" / "_helpers.tpl").read_text()
    assert f"runAsUser: {uid}" in helpers and f"runAsGroup: {gid}" in helpers


def test_no_secret_is_baked_in(repo_root: Path, steps: list[tuple[str, str]]) -> None:
    for keyword, args in steps:
        if keyword in {"ENV", "ARG", "LABEL"}:
            names = re.findall(r"(\w+)=", args) or [args.split()[0]]
            assert not [n for n in names if SECRETISH.search(n)], f"{keyword} {args}"
        if keyword in {"COPY", "ADD"}:
            assert ".env" not in args.split() and "id_" not in args, f"{keyword} {args}"
    ignored = (repo_root / ".dockerignore").read_text().split()
    for must_ignore in (".env", ".env.*", ".git", ".venv", ".data", "*.duckdb"):
        assert must_ignore in ignored, must_ignore
    # ... while everything the Dockerfile copies stays in the build context.
    copied = [a.split()[:-1] for k, a in steps if k == "COPY" and "--from" not in a]
    for source in (s for sources in copied for s in sources):
        assert (repo_root / source).exists(), source
        assert source not in ignored and source.rstrip("/") not in ignored, source


def test_processes_start_under_tini_with_the_code_server_by_default(steps: list[tuple[str, str]]) -> None:
    runtime = dict((k, a) for k, a in stages(steps)["runtime"] if k in {"ENTRYPOINT", "CMD"})
    assert json.loads(runtime["ENTRYPOINT"]) == ["/usr/bin/tini", "--"]
    assert json.loads(runtime["CMD"])[:3] == ["dagster", "api", "grpc"]
