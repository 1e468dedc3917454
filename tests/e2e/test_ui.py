"""The Dagster UI, served by a real webserver on loopback and read in headless Chromium.

The webserver shows an instance with history: `medallion demo` ran into it, and then a load of one bronze
partition went wrong (a writer bug left a row out) so that its gate failed. The screenshots of the README's
walkthrough ("Watch it in the Dagster UI") are taken here, from that instance: `docs/images/ui-*.png`.
"""

from __future__ import annotations

import datetime as dt
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


IMAGES = settings.project_root() / "docs" / "images"
MAX_IMAGE_BYTES = 150_000
DAYS = 3  # of demo data
# How long a page may take to show what a step waits for: waited out only when the UI is broken, not when the
# machine is busy.
WAIT_MS = 180_000

# Run in the platform's environment after the demo: bronze customers of the last day loaded again by a
# load that leaves a row out (a writer bug), as `tests/e2e/test_demo.py` does it; its gate fails the run.
BREAK_A_GATE = """
import sys

import dagster as dg
from deltalake import DeltaTable

import dagster_project.lib.bronze.engine as engine
from dagster_project import settings
from dagster_project.definitions import defs as load_defs

day = sys.argv[1]
real_load = engine.load_partition


def losing_a_row(*args, **kwargs):
    result = real_load(*args, **kwargs)
    lake = settings.lake()
    DeltaTable(lake.table("bronze", "customers"), storage_options=lake.delta_options()).delete(
        f"business_date = '{day}' AND _source_row = 1"
    )
    return result


engine.load_partition = losing_a_row
defs = load_defs()
with dg.DagsterInstance.get() as instance:
    run = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        partition_key=day,
        asset_selection=[dg.AssetKey(["bronze", "customers"]), dg.AssetKey(["quarantine", "customers"])],
        raise_on_error=False,
    )
[gate] = [e for e in run.get_asset_check_evaluations() if e.check_name == "gx_bronze_gate"]
assert not gate.passed and not run.success, "the gate did not fail"
"""


@pytest.fixture(scope="module")
def platform_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of an embedded platform with history: the demo's runs, then a failed gate. Partitions
    start where they do for a new user (MEDALLION_FIRST_BUSINESS_DATE unset): near the data."""
    data = tmp_path_factory.mktemp("platform") / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDALLION_", "DAGSTER_"))}
    env |= {
        "MEDALLION_DATA_DIR": str(data),
        "DAGSTER_HOME": str(data / "dagster"),
        "MEDALLION_SFTP_PORT": "0",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    bin_dir = Path(sys.executable).parent
    demo = subprocess.run(
        [str(bin_dir / "medallion"), "demo", "--days", str(DAYS)], env=env, capture_output=True, text=True, check=False
    )
    assert demo.returncode == 0, (demo.stdout + demo.stderr)[-4000:]
    env["MEDALLION_PII_HMAC_KEY"] = (data / "secrets" / "pii_hmac_key").read_text().strip()
    last_day = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    broken = subprocess.run(
        [sys.executable, "-c", BREAK_A_GATE, last_day], env=env, capture_output=True, text=True, check=False
    )
    assert broken.returncode == 0, broken.stderr[-3000:]
    return env


@pytest.fixture(scope="module")
def webserver(platform_home: dict[str, str]) -> Iterator[str]:
    port = _free_port()
    env = platform_home
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
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(WAIT_MS)  # every wait, navigation and shot
        # The first-visit newsletter dialog opens over whatever page is shown once the server answers, which can
        # be many seconds late on a loaded machine. Mark it seen, as a user who dismissed it has it, so no
        # screenshot shows it; should it open all the same, Playwright skips it before any click.
        page.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
        skip = page.get_by_role("button", name="Skip")
        page.add_locator_handler(skip, lambda: skip.click())
        yield page
        browser.close()


@pytest.mark.parametrize(
    ("group", "assets"),
    [
        ("bronze", ["customers", "payment_events"]),
        ("silver", ["stg_acme__customers", "stg_psp__charges"]),
        ("gold", ["dim_customers", "payout_reconciliation"]),
    ],
)
def test_layer_groups_show_their_assets(webserver: str, page: Page, group: str, assets: list[str]):
    page.goto(f"{webserver}/locations/medallion/asset-groups/{group}/list")
    for asset in assets:
        # Long names are shortened in the list; the row links to the asset's page by its full key.
        page.locator(f'a[href*="/assets/{group}/{asset}"]').first.wait_for()
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
    page.goto(f"{webserver}/assets/{asset_path}?view=checks")
    page.get_by_text(check).first.wait_for()


def _shoot(page: Page, name: str, *, height: int | None = None) -> Path:
    """A PNG of the viewport (its top `height` pixels), small enough to commit."""
    path = IMAGES / f"ui-{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.wait_for_load_state("networkidle")
    clip = None if height is None else {"x": 0, "y": 0, "width": page.viewport_size["width"], "height": height}
    page.screenshot(path=str(path), clip=clip, animations="disabled")
    assert path.stat().st_size <= MAX_IMAGE_BYTES, f"{path.name}: {path.stat().st_size} bytes"
    return path


def test_the_walkthrough_screenshots_show_what_the_readme_says(webserver: str, page: Page):
    """Each view the README's walkthrough describes, with what it points at checked before the shot."""
    last_day = (dt.date.today() - dt.timedelta(days=1)).isoformat()

    # The lineage of bronze customers: landing before it, its quarantine beside it, silver after it.
    page.goto(f"{webserver}/assets/bronze/customers?view=lineage&lineageScope=neighbors&lineageDepth=1")
    for label in ("stg_acme__customer_versions",):
        page.get_by_text(label).first.wait_for()
    _shoot(page, "lineage")

    # Its partitions: the days the demo loaded, near the start, and the last day's materialization.
    page.goto(f"{webserver}/assets/bronze/customers?view=partitions")
    page.get_by_text(last_day).first.click()
    page.get_by_text("dagster/partition_row_count").first.wait_for()
    _shoot(page, "partitions")

    # The failed gate: its check page with the failure's description.
    page.goto(f"{webserver}/assets/bronze/customers?view=checks&checkDetail=gx_bronze_gate")
    page.get_by_text("expect_table_row_count_to_equal").first.wait_for()
    _shoot(page, "failed-gate")

    # The runs: the demo's, and the failed one.
    page.goto(f"{webserver}/runs")
    page.get_by_text("Failure").first.wait_for()
    _shoot(page, "runs", height=480)
