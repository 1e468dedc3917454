from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagster_project import settings
from dagster_project.services.loopback import serve_in_thread
from dagster_project.services.webhook_receiver import create_app

STRIPE_SECRET = "whsec_test_payments_pipeline"
PII_KEY = "test-only-hmac-key-0123456789abcdef"


@pytest.fixture(scope="session")
def parsed_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Parse the dbt project as the Makefile does, so the transform assets can load its manifest."""
    scratch = tmp_path_factory.mktemp("parse")
    project_dir = settings.dbt_project_dir()
    env = {"MEDALLION_LAKE_ROOT": str(scratch / "lake"), "MEDALLION_WAREHOUSE_PATH": str(scratch / "warehouse.duckdb")}
    subprocess.run(
        [
            str(Path(sys.executable).with_name("dbt")),
            "parse",
            "--quiet",
            "--project-dir",
            str(project_dir),
            "--profiles-dir",
            str(project_dir),
        ],
        check=True,
        cwd=project_dir,
        env={**os.environ, **env},
    )
    return project_dir / "target" / "manifest.json"


@pytest.fixture
def inbox_url(platform_env: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The platform's webhook inbox: a SQLite file in the test's folder, found through settings."""
    url = f"sqlite:///{platform_env / 'webhooks' / 'inbox.sqlite'}"
    monkeypatch.setenv("MEDALLION_WEBHOOK_INBOX_URL", url)
    monkeypatch.setenv("MEDALLION_PII_HMAC_KEY", PII_KEY)
    assert settings.webhook_inbox_url() == url
    return url


@pytest.fixture
def receiver(inbox_url: str) -> Iterator[str]:
    """The real webhook receiver under uvicorn on a loopback port; yields its base URL."""
    app = create_app(
        inbox_url=inbox_url,
        secrets={"stripe": [STRIPE_SECRET]},
        schemes={"stripe": "stripe"},
        max_body_bytes=64 * 1024,
        tolerance_seconds=300,
        auto_migrate=True,
    )
    with serve_in_thread(app, name="webhook-receiver") as base_url:
        yield base_url
