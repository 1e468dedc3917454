"""The Dagster UI, served by a real webserver on loopback and read in headless Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from dagster_project import settings

pytestmark = [pytest.mark.ui, pytest.mark.slow, pytest.mark.xdist_group("ui")]  # one webserver per session

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def webserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(settings.project_root() / "infra" / "dagster" / "dagster.yaml", home / "dagster.yaml")
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "MEDALLION_DATA_DIR": str(home / "data")}
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            str(settings.project_root() / "workspace.yaml"),
        ],
        cwd=settings.project_root(),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, "the webserver exited"
            try:
                if httpx.get(f"{base}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the webserver did not come up within 180 s"
            time.sleep(1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    assert Path(CHROMIUM).exists(), "the UI test needs Chromium (`make browser` installs it)"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser.new_page(viewport={"width": 1600, "height": 1200})
        browser.close()


def _open(page: Page, url: str) -> str:
    page.goto(url)
    skip = page.get_by_role("button", name="Skip")  # the first-visit newsletter dialog
    try:
        skip.click(timeout=3000)
    except Exception:
        pass
    return url


@pytest.mark.parametrize(
    ("group", "assets"),
    [
        ("bronze", ["customers", "payment_events"]),
        ("silver", ["stg_acme__customers", "stg_psp__charges"]),
        ("gold", ["dim_customers", "payout_reconciliation"]),
    ],
)
def test_layer_groups_show_their_assets(webserver: str, page: Page, group: str, assets: list[str]):
    _open(page, f"{webserver}/locations/medallion/asset-groups/{group}/list")
    for asset in assets:
        # Long names are shortened in the list; the row links to the asset's page by its full key.
        page.locator(f'a[href*="/assets/{group}/{asset}"]').first.wait_for(timeout=60_000)
    assert page.get_by_text("Asset Group in").first.is_visible()


@pytest.mark.parametrize(
    ("asset_path", "check"),
    [
        ("bronze/customers", "gx_bronze_gate"),
        ("silver/stg_acme__customers", "gx_silver_gate"),
        ("gold/dim_customers", "gx_gold_gate"),
    ],
)
def test_gates_are_listed_as_checks(webserver: str, page: Page, asset_path: str, check: str):
    _open(page, f"{webserver}/assets/{asset_path}?view=checks")
    page.get_by_text(check).first.wait_for(timeout=60_000)
