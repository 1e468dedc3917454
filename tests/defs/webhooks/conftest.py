from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from deltalake import DeltaTable

from dagster_project import settings
from dagster_project.definitions import defs as load_defs
from dagster_project.defs.common.partitions import daily_partitions
from dagster_project.defs.sftp.resources import SftpResource
from dagster_project.defs.webhooks.resources import InboxResource
from dagster_project.services.loopback import serve_in_thread
from dagster_project.services.webhook_receiver import create_app

STRIPE_SECRET = "whsec_test_payments_pipeline"
SHOP_SECRET = "whsec_c2hvcC1ldmVudHMtdGVzdC1zZWNyZXQtMzItYnl0ZXMh"  # Standard Webhooks: whsec_ + base64
PII_KEY = "test-only-hmac-key-0123456789abcdef"


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
    """The real webhook receiver under uvicorn on a loopback port, for the PSP and the shop; yields its base URL."""
    app = create_app(
        inbox_url=inbox_url,
        secrets={"stripe": [STRIPE_SECRET], "shop": [SHOP_SECRET]},
        schemes={"stripe": "stripe", "shop": "standard"},
        max_body_bytes=64 * 1024,
        tolerance_seconds=300,
        auto_migrate=True,
        first_business_date=daily_partitions.start.date(),  # as `create_app_from_settings` does
    )
    with serve_in_thread(app, name="webhook-receiver") as base_url:
        yield base_url


class Platform:
    """Drives sensors and runs the way the daemon would, on one ephemeral instance."""

    def __init__(self, lake: Path, sftp_root: Path):
        self.lake = lake
        self.sftp_inbox = sftp_root / "inbox"
        self.defs = load_defs()
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursors: dict[str, str | None] = {}

    def tick(self, sensor_name: str) -> list[dg.RunRequest]:
        sensor = self.defs.resolve_sensor_def(sensor_name)
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursors.get(sensor_name),
            resources={
                "inbox": InboxResource(url=settings.webhook_inbox_url()),
                "sftp": SftpResource.from_settings(settings.sftp()),
            },
        )
        result = sensor(context)
        self.cursors[sensor_name] = result.cursor
        return list(result.run_requests or [])

    def run(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_job_def(request.job_name)
        return job.execute_in_process(
            instance=self.instance,
            partition_key=request.partition_key,
            run_config=request.run_config,
            tags=request.tags,
        )

    def table(self, *path: str) -> list[dict]:
        return DeltaTable(str(self.lake.joinpath(*path))).to_pyarrow_table().to_pylist()
