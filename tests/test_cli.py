"""The `medallion` command as a user runs it: sample data delivered to real services, and `medallion dev`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from dagster_project import cli, settings
from dagster_project.services.loopback import serve_in_thread
from dagster_project.services.sftp_server import EmbeddedSftpServer
from dagster_project.services.webhook_receiver import create_app_from_settings

MEDALLION = str(Path(sys.executable).parent / "medallion")


@pytest.mark.parametrize(
    "command", [["demo"], ["dev"], ["sample-data"], ["sftp-server"], ["webhooks", "serve"], ["webhooks", "migrate"]]
)
def test_every_subcommand_has_help(command: list[str]):
    out = subprocess.run([MEDALLION, *command, "--help"], capture_output=True, text=True, check=True).stdout
    assert out.startswith(f"usage: medallion {' '.join(command)}"), out


@pytest.mark.sftp
def test_sample_data_uploads_files_and_posts_signed_webhooks(
    sftp_env: EmbeddedSftpServer, platform_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    monkeypatch.setenv("MEDALLION_WEBHOOK_SECRETS_STRIPE", "whsec_test_cli")
    out = platform_env / "samples"
    with serve_in_thread(create_app_from_settings(), name="webhook receiver") as url:
        assert cli.main(["sample-data", "--days", "3", "--out", str(out), "--upload", "--post", url]) == 0
    printed = capsys.readouterr().out

    inbox = {p.name for p in (sftp_env.root / "inbox").iterdir()}
    assert {p.name for p in (out / "customers").glob("*.csv")} <= inbox
    payouts = {p.name for p in (out / "payments").glob("psp_payouts_*.csv")}
    assert payouts and payouts <= inbox

    deliveries = [json.loads(line) for line in (out / "payments" / "webhook_deliveries.jsonl").read_text().splitlines()]
    kinds = [d["kind"] for d in deliveries]
    assert kinds.count("tampered") == 1 and "resend" in kinds
    assert all("Stripe-Signature" in d["headers"] for d in deliveries)
    assert "1 x HTTP 401" in printed  # the tampered one, refused

    # Every signed event stored once, the tampered one not at all.
    expected = {d["event_id"] for d in deliveries if d["kind"] != "tampered"}
    engine = sa.create_engine(settings.webhook_inbox_url())
    with engine.connect() as con:
        stored = [row[0] for row in con.execute(sa.text("SELECT event_id FROM webhook_events"))]
    engine.dispose()
    assert sorted(stored) == sorted(expected)


@pytest.mark.sftp
def test_sample_data_again_is_new_data_for_the_same_days_not_a_resend(
    sftp_env: EmbeddedSftpServer, platform_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    """What the README's upload does after `make demo` the same day: new files numbered after every number
    delivered (landed, or waiting in the inbox), new events, for the demo's business days."""
    from dagster_project.demo import demo_days
    from dagster_project.lib.intake import sequences
    from dagster_project.lib.sources.naming import parse_file_name
    from dagster_project.lib.sources.registry import CONSENTS, CUSTOMERS, PSP_PAYOUTS

    monkeypatch.setenv("MEDALLION_WEBHOOK_SECRETS_STRIPE", "whsec_test_cli")
    # A payout file that landed before: its number is taken whether or not its file is still anywhere.
    landed = PSP_PAYOUTS.files.file_name(demo_days(3)[0].isoformat(), 4, "0000ABCD")
    sequences.claim(settings.lake(), parse_file_name(landed), "0" * 64)

    def sample(out: Path) -> dict[str, list[int]]:
        with serve_in_thread(create_app_from_settings(), name="webhook receiver") as url:
            assert cli.main(["sample-data", "--days", "3", "--out", str(out), "--upload", "--post", url]) == 0
        numbers: dict[str, list[int]] = {}
        for path in sorted(out.rglob("*_seq-*.csv")):
            parsed = parse_file_name(path.name)
            if not path.name.endswith("DEADBEEF.csv"):  # the one with a wrong CRC32, refused before its number
                numbers.setdefault(parsed.source.name, []).append(parsed.sequence)
                assert parsed.business_date in {d.isoformat() for d in demo_days(3)}
        return numbers

    first = sample(platform_env / "first")
    assert first == {CUSTOMERS.name: [1, 2, 3], CONSENTS.name: [1, 2, 3], PSP_PAYOUTS.name: [5, 6]}
    assert "sample batch 1:" in capsys.readouterr().out
    # the first batch is still in the inbox (nothing took it): the second comes after it
    second = sample(platform_env / "second")
    assert second == {CUSTOMERS.name: [4, 5, 6], CONSENTS.name: [4, 5, 6], PSP_PAYOUTS.name: [7, 8]}
    printed = capsys.readouterr().out
    assert "sample batch 4:" in printed and "HTTP 409" not in printed

    names = [p.name for p in (sftp_env.root / "inbox").iterdir()]
    assert len(names) == len(set(names))
    first_bytes = {p.read_bytes() for p in (platform_env / "first").rglob("*_seq-*.csv")}
    assert not first_bytes & {p.read_bytes() for p in (platform_env / "second").rglob("*_seq-*.csv")}
    engine = sa.create_engine(settings.webhook_inbox_url())
    with engine.connect() as con:
        stored = [row[0] for row in con.execute(sa.text("SELECT event_id FROM webhook_events"))]
    engine.dispose()
    deliveries = [
        json.loads(line)
        for out in ("first", "second")
        for line in (platform_env / out / "payments" / "webhook_deliveries.jsonl").read_text().splitlines()
    ]
    # every event of both batches stored, none of the second a duplicate of the first
    assert sorted(stored) == sorted({d["event_id"] for d in deliveries if d["kind"] != "tampered"})
    assert len(stored) == 2 * len(
        {d["event_id"] for d in deliveries[: len(deliveries) // 2] if d["kind"] != "tampered"}
    )


def test_sample_data_refuses_too_few_days(platform_env: Path):
    with pytest.raises(SystemExit, match="at least 3"):
        cli.main(["sample-data", "--days", "2"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, deadline: float) -> None:
    while True:
        assert process.poll() is None, "medallion dev exited"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer in time"
        time.sleep(1)


@pytest.mark.slow
@pytest.mark.sftp
def test_dev_serves_ui_receiver_and_sftp_and_stops_cleanly(tmp_path: Path):
    ui_port, webhooks_port, sftp_port = _free_port(), _free_port(), _free_port()
    data = tmp_path / "data"
    env = {
        **os.environ,
        "MEDALLION_DATA_DIR": str(data),
        "DAGSTER_HOME": str(data / "dagster"),
    }
    for name in (
        "MEDALLION_WEBHOOK_SECRETS_STRIPE",
        "MEDALLION_PII_HMAC_KEY",
        "MEDALLION_WEBHOOK_INBOX_URL",
        "MEDALLION_SFTP_PORT",
    ):
        env.pop(name, None)
    ports = ["--port", str(ui_port), "--webhooks-port", str(webhooks_port), "--sftp-port", str(sftp_port)]
    command = [MEDALLION, "dev", *ports]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        _wait_for(f"http://127.0.0.1:{webhooks_port}/readyz", process, deadline)
        _wait_for(f"http://127.0.0.1:{ui_port}/server_info", process, deadline)
        with socket.create_connection(("127.0.0.1", sftp_port), timeout=60) as ssh:
            assert ssh.recv(64).startswith(b"SSH-2.0-")
        # The receiver signs with the secret generated for the embedded platform.
        assert (data / "secrets" / "webhook_secret_stripe").exists()
        unsigned = httpx.post(f"http://127.0.0.1:{webhooks_port}/webhooks/stripe", content=b"{}")
        assert unsigned.status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{webhooks_port}/healthz", timeout=2)


def test_make_dev_passes_its_ports_to_medallion_dev():
    def command(*variables: str) -> str:
        # Not a sub-make of the `make test` running this test: no "Entering directory" lines, no inherited flags.
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        done = subprocess.run(
            ["make", "--no-print-directory", "-n", "dev", *variables],
            cwd=settings.project_root(),
            env={**env, "PORT": "9999"},  # a PORT the shell exports is not taken for the UI's
            capture_output=True,
            text=True,
            check=True,
        )
        return next(line for line in reversed(done.stdout.splitlines()) if "medallion dev" in line).strip()

    assert command().endswith("medallion dev --port 3000 --webhooks-port 8000")
    assert command("PORT=3001", "WEBHOOKS_PORT=8001", "SFTP_PORT=2223").endswith(
        "medallion dev --port 3001 --webhooks-port 8001 --sftp-port 2223"
    )


def test_the_embedded_instance_gets_the_platform_config_and_its_storage_before_any_process_starts(
    platform_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster_project.demo import prepare_instance_home

    monkeypatch.delenv("DAGSTER_HOME")  # as under `make demo`: the folder comes from MEDALLION_DATA_DIR

    home = platform_env / "dagster"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # a stale copy from an older checkout

    assert prepare_instance_home() == home
    assert (home / "dagster.yaml").read_text() == (settings.project_root() / "infra/dagster/dagster.yaml").read_text()
    assert (home / "history" / "runs.db").exists()  # created here, not raced for by the daemon and its code server


def test_a_placeholder_pii_key_stops_the_platform_before_anything_starts(tmp_path: Path):
    env = {
        **os.environ,
        "MEDALLION_DATA_DIR": str(tmp_path / "data"),
        "MEDALLION_PII_HMAC_KEY": "change-me-pii-hmac-key",
    }
    env.pop("DAGSTER_HOME", None)
    done = subprocess.run([MEDALLION, "erase", "--customer-id", "1"], env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "MEDALLION_PII_HMAC_KEY: the PII tokenisation key is a documented placeholder" in done.stderr
    assert "change-me-pii-hmac-key" not in done.stderr + done.stdout
    assert not (tmp_path / "data" / "dagster").exists()  # nothing was started
