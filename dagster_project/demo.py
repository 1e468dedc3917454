"""`medallion demo`: the whole platform end to end, on the embedded defaults, in one process.

It starts the embedded SFTP server, drops several days of partner files (with their dirt, plus one
file with a broken name and one with a wrong checksum) into the inbox, lets the inbox sensor find them,
runs the intake job per file, then refines silver and gold behind their gates, all against the real
Dagster instance in $DAGSTER_HOME so that `make dev` shows the history afterwards.

Nothing changes `os.environ`. The demo runs in a child process started with the environment the embedded
platform needs on top of the configured one (DAGSTER_HOME, and a local secret for each secret left unset),
so the runs, the webhook receiver and the dbt commands the runs start all see the same values. Inside it,
the one resource that differs from the configured definitions (the SFTP server on the port it actually
bound) is passed to the runs explicitly.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import os
import pickle
import secrets
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from dagster_project import settings
from dagster_project.lib.clients.sftp import SftpClient
from dagster_project.lib.sources.registry import CONSENTS, CUSTOMERS
from dagster_project.samples.orders import land_sample_orders
from dagster_project.samples.partner_files import GeneratedFile, write_consent_files, write_customer_files
from dagster_project.samples.payments import PaymentsTruth, build_payments_sample, post_deliveries
from dagster_project.samples.shop_events import WEBHOOK_PATH as SHOP_WEBHOOK_PATH
from dagster_project.samples.shop_events import build_shop_deliveries
from dagster_project.services.sftp_server import EmbeddedSftpServer

CRM_SCORES_KEY = dg.AssetKey(["reverse_etl", "crm_customer_scores"])

# The demo prints its own summary; the runs' step-by-step logs stay in the instance (and the UI).
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

PSP = "stripe"
SHOP = "shop"  # Standard Webhooks: a secret is `whsec_` + base64 of the key
# Secrets the embedded platform makes for itself when the environment does not configure them.
LOCAL_SECRETS = {
    "MEDALLION_PII_HMAC_KEY": "pii_hmac_key",
    f"MEDALLION_WEBHOOK_SECRETS_{PSP.upper()}": f"webhook_secret_{PSP}",
    f"MEDALLION_WEBHOOK_SECRETS_{SHOP.upper()}": f"webhook_secret_{SHOP}",
}


@dataclass
class DemoSummary:
    files_uploaded: int = 0
    intake_runs: int = 0
    remote_quarantine: list[str] = field(default_factory=list)
    bronze_rows: dict[str, int] = field(default_factory=dict)
    quarantined_rows: dict[str, int] = field(default_factory=dict)
    quarantine_reasons: Counter[str] = field(default_factory=Counter)
    lake_rows: dict[str, int] = field(default_factory=dict)  # silver and gold
    gates: list[tuple[str, str, bool]] = field(default_factory=list)  # (asset, check, passed)
    failed_runs: list[str] = field(default_factory=list)
    webhook_answers: dict[int, int] = field(default_factory=dict)
    shop_webhook_answers: dict[int, int] = field(default_factory=dict)
    payments: PaymentsTruth | None = None
    reconciliation: list[tuple] = field(default_factory=list)  # (payout_id, status, expected, paid, currency)
    crm_sync: dict[str, int] = field(default_factory=dict)
    expected: list[GeneratedFile] = field(default_factory=list)

    def render(self) -> str:
        lines = ["", "Medallion demo summary", "=" * 22]
        lines.append(f"files uploaded to the SFTP inbox: {self.files_uploaded}; intake runs: {self.intake_runs}")
        answers = ", ".join(f"{count} x HTTP {code}" for code, count in self.webhook_answers.items())
        lines.append(f"signed PSP webhooks posted to the receiver: {answers}")
        answers = ", ".join(f"{count} x HTTP {code}" for code, count in self.shop_webhook_answers.items())
        lines.append(f"signed shop webhooks (Standard Webhooks) posted to the receiver: {answers}")
        for name in self.remote_quarantine:
            lines.append(f"  rejected at the inbox: {name}")
        lines.append("bronze (Delta):")
        for table, rows in self.bronze_rows.items():
            lines.append(f"  bronze.{table:<28} {rows:>8} rows")
        for table, rows in self.quarantined_rows.items():
            lines.append(f"  quarantine.{table:<24} {rows:>8} rows")
        for reason, count in self.quarantine_reasons.most_common():
            lines.append(f"      {count:>4} x {reason}")
        lines.append("silver and gold (Delta, in the lake):")
        for table, rows in self.lake_rows.items():
            lines.append(f"  {table:<35} {rows:>8} rows")
        lines.append("payout reconciliation (gold.payout_reconciliation):")
        for payout_id, status, expected, paid, currency in self.reconciliation:
            lines.append(
                f"  {payout_id:<24} {status:<15} expected net {expected:>8} paid {paid:>8} {currency} (minor units)"
            )
        if self.crm_sync:
            counts = ", ".join(f"{v} {k}" for k, v in self.crm_sync.items())
            lines.append(f"reverse ETL gold.customer_segments -> crm.customer_scores: {counts}")
        lines.append("gates (Great Expectations, blocking) and intake checks:")
        tally = Counter(self.gates)
        for (asset, check, passed), count in tally.items():
            if check.startswith("gx_") or check in ("files_accepted", "sequence_gaps"):
                times = f" (x{count})" if count > 1 else ""
                lines.append(f"  {'PASS' if passed else 'FAIL'}  {asset} :: {check}{times}")
        dbt_tests = [
            passed
            for (_, check, passed), n in tally.items()
            for _ in range(n)
            if not check.startswith("gx_") and check not in ("files_accepted", "sequence_gaps")
        ]
        lines.append(f"dbt tests as asset checks: {sum(dbt_tests)} passed, {len(dbt_tests) - sum(dbt_tests)} failed")
        for run in self.failed_runs:
            lines.append(f"run failed: {run}")
        return "\n".join(lines)


def prepare_instance_home() -> Path:
    """The embedded instance's folder (DAGSTER_HOME of the platform's processes), with the platform's
    dagster.yaml (refreshed when the repository's changed) and its storage created.

    The storage is created here, before any Dagster process starts: the daemon and its code server would
    otherwise both create the SQLite schema of a new instance at the same moment, and one of them fail."""
    home = settings.dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    platform_config = (settings.project_root() / "infra" / "dagster" / "dagster.yaml").read_text()
    if not config.exists() or config.read_text() != platform_config:
        config.write_text(platform_config)
    # In a child: the instance config names its folder by DAGSTER_HOME, which this process need not have.
    subprocess.run(
        [sys.executable, "-c", "import dagster as dg; dg.DagsterInstance.get().dispose()"],
        env=settings.child_environment({"DAGSTER_HOME": str(home)}),
        check=True,
    )
    return home


def _local_secret(file_name: str) -> str:
    """A secret of the embedded platform: random, made once, kept under .data/secrets with owner-only
    permissions (like the embedded SFTP server's keys). Deployments set the variable from a secret store."""
    path = settings.data_dir() / "secrets" / file_name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            if file_name.endswith(SHOP):
                fh.write("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
            else:
                fh.write(secrets.token_hex(32))
    return path.read_text().strip()


def local_secrets() -> dict[str, str]:
    """The PII HMAC key and the webhook signing secrets where the environment sets none, by variable name."""
    return {name: _local_secret(file) for name, file in LOCAL_SECRETS.items() if not settings.is_configured(name)}


def embedded_environment() -> dict[str, str]:
    """What the embedded platform's processes get on top of this process's environment. A configured PII
    key that cannot be one (too short, a placeholder) stops it here, before any process starts."""
    from dagster_project.lib.masking import validate_key

    secrets_ = local_secrets()
    try:
        validate_key((secrets_.get(settings.PII_HMAC_KEY) or settings.pii_hmac_key()).encode())
    except ValueError as exc:
        raise SystemExit(f"{settings.PII_HMAC_KEY}: {exc}") from None
    return {"DAGSTER_HOME": str(prepare_instance_home()), **secrets_}


def signing_secret(provider: str) -> str:
    """The secret a webhook provider signs with: the configured one, else the embedded platform's."""
    configured = settings.webhook_secrets(provider)
    return configured[0] if configured else local_secrets()[f"MEDALLION_WEBHOOK_SECRETS_{provider.upper()}"]


@contextmanager
def webhook_receiver() -> Iterator[str]:
    """The real webhook receiver (uvicorn) on a free loopback port, in a background thread."""
    from dagster_project.services.loopback import serve_in_thread
    from dagster_project.services.webhook_receiver import create_app_from_settings

    with serve_in_thread(create_app_from_settings(), name="webhook receiver") as base_url:
        yield base_url


def demo_days(count: int, today: dt.date | None = None) -> list[dt.date]:
    today = today or dt.date.today()
    return [today - dt.timedelta(days=count - i) for i in range(count)]


def write_sample_files(
    out_dir: Path, days: list[dt.date], *, seed: int = 7, first_sequences: Mapping[str, int] | None = None
) -> tuple[list[GeneratedFile], list[Path]]:
    """The good partner files (customers and consents) and two that the inbox must refuse (a broken name, a
    wrong CRC32). `first_sequences` (feed -> number) numbers each feed's files from there on (default 1)."""
    first = first_sequences or {}
    files = write_customer_files(out_dir, days, seed=seed, first_sequence=first.get(CUSTOMERS.name, 1))
    broken_name = out_dir / f"acme_customers_{days[-1].isoformat()}_final.csv"
    broken_name.write_bytes(files[-1].path.read_bytes())
    # a corrupted copy of the last export: refused on its CRC32 before its number is claimed
    last = first.get(CUSTOMERS.name, 1) + len(days) - 1
    wrong_crc = out_dir / CUSTOMERS.files.file_name(days[-1].isoformat(), last, "DEADBEEF")
    wrong_crc.write_bytes(files[-1].path.read_bytes())
    consents = write_consent_files(out_dir, days, seed=seed, first_sequence=first.get(CONSENTS.name, 1))
    return files + consents, [broken_name, wrong_crc]


def upload(client: SftpClient, paths: list[Path], inbox: str) -> None:
    for path in paths:
        client.upload(path, f"{inbox}/{path.name}")


def run_demo(days: int = 5) -> DemoSummary:
    """Run the demo in a child process started with `embedded_environment()`; returns its summary."""
    if days < 3:
        raise ValueError("the demo needs at least three days of data")
    with tempfile.TemporaryDirectory(prefix="medallion-demo-") as tmp:
        out = Path(tmp) / "summary.pickle"
        entry = "import sys; from dagster_project.demo import main; main(sys.argv[1:])"
        done = subprocess.run(
            [sys.executable, "-c", entry, str(days), str(out)],
            env=settings.child_environment(embedded_environment()),
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the demo process failed with exit code {done.returncode} (its error is above)")
        # Written just now by the child, from this same code, into a folder only this process knows.
        return pickle.loads(out.read_bytes())


def main(argv: Sequence[str]) -> None:
    """Entry point of the demo's child process: `<days> <summary file>`."""
    days, out = int(argv[0]), Path(argv[1])
    out.write_bytes(pickle.dumps(run_demo_in_this_process(days)))


def run_demo_in_this_process(days: int) -> DemoSummary:
    """The demo itself; the process must already have the embedded platform's environment (see `run_demo`)."""
    from dagster_project.definitions import defs as load_defs
    from dagster_project.defs.sftp.resources import SftpResource

    summary = DemoSummary()
    business_days = demo_days(days)
    samples = settings.data_dir() / "samples"
    sftp_settings = settings.sftp()
    with (
        dg.DagsterInstance.get() as instance,
        EmbeddedSftpServer(
            root=settings.sftp_root(),
            keys_dir=settings.sftp_keys_dir(),
            host=sftp_settings.host,
            port=sftp_settings.port,
            username=sftp_settings.username,
        ) as server,
        webhook_receiver() as receiver_url,
    ):
        # The configured port may be 0 (any free port): the runs get the one the server bound. The demo uploads
        # whole files (`.part`, then renamed) and looks twice at once: no stability window to wait out.
        sftp = SftpResource.from_settings(dataclasses.replace(sftp_settings, port=server.port, stable_seconds=0))
        # The PSP signs its webhooks and posts them to the receiver (duplicates, a refund before its
        # capture and one tampered event included); its payout files go to the SFTP inbox.
        payments = build_payments_sample(samples / "payments", business_days[-3:], secret=signing_secret(PSP))
        summary.webhook_answers = post_deliveries(receiver_url, payments.deliveries)
        summary.payments = payments.truth
        # The shop notifies order events over Standard Webhooks (one redelivery a day included).
        shop = build_shop_deliveries(business_days[-3:], secret=signing_secret(SHOP))
        summary.shop_webhook_answers = post_deliveries(receiver_url, shop, path=SHOP_WEBHOOK_PATH)
        good, refused = write_sample_files(samples / "customers", business_days)
        summary.expected = good
        with sftp.client() as client:
            upload(client, [f.path for f in good + payments.payout_files] + refused, sftp.layout().inbox)
        summary.files_uploaded = len(good) + len(payments.payout_files) + len(refused)

        defs = load_defs()
        # The automation sensor runs from the start under `make dev`: its first evaluation, before anything
        # lands, is what later ones compare with.
        automation_cursor = dg.evaluate_automation_conditions(defs=defs, instance=instance).cursor
        # Two looks at the inbox: a file is taken once its size and mtime held still between them.
        requests = _sensor_requests(defs, instance, "sftp_inbox_sensor", {"sftp": sftp}, looks=2)
        requests += _sensor_requests(
            defs, instance, "webhook_events_sensor", {"inbox": defs.resources["inbox"]}, looks=1
        )
        for request in requests:
            run = defs.resolve_job_def(request.job_name).execute_in_process(
                instance=instance,
                partition_key=request.partition_key,
                run_config={**(request.run_config or {}), **QUIET},
                tags=request.tags,
                resources={"sftp": sftp},
                raise_on_error=False,
            )
            summary.intake_runs += 1
            _collect_run(run, summary)
        with sftp.client() as client:
            summary.remote_quarantine = sorted(
                f.name for f in client.list_dir(sftp.layout().quarantine) if not f.name.endswith(".reason.txt")
            )

        # Shop orders as an Airbyte connection's destination writes them (no Airbyte server runs here).
        orders = land_sample_orders(settings.lake_root(), business_days)
        order_days = sorted(orders["orders_by_date"])
        for day in order_days:
            run = defs.resolve_job_def("shop_orders_bronze").execute_in_process(
                instance=instance, partition_key=day, run_config=QUIET, raise_on_error=False
            )
            _collect_run(run, summary)

        # Then what the automation daemon does under `make dev`: the real automation conditions, evaluated until
        # they request nothing more, each request run as the daemon would launch it.
        _follow_automation(defs, instance, summary, automation_cursor)
    _collect_tables(summary)
    return summary


def _sensor_requests(
    defs: dg.Definitions, instance: dg.DagsterInstance, name: str, resources: dict, *, looks: int
) -> list[dg.RunRequest]:
    sensor = defs.resolve_sensor_def(name)
    cursor, requests = None, []
    for _ in range(looks):
        result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))
        cursor = result.cursor
        requests.extend(result.run_requests or [])
    return requests


# Evaluations of the automation conditions at most: each one moves a layer on (silver, gold, reverse ETL), and
# the last finds nothing left to request.
AUTOMATION_ROUNDS = 8


def _follow_automation(
    defs: dg.Definitions, instance: dg.DagsterInstance, summary: DemoSummary, cursor: object
) -> None:
    """Evaluate the definitions' automation conditions (FOLLOW_UPSTREAM on silver, gold and reverse ETL) and run
    what they request, round after round, as the automation sensor and the daemon do under `make dev`.
    `cursor`: the evaluation made before the intake (the sensor was running before anything arrived)."""
    job = defs.resolve_implicit_global_asset_job_def()
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    for _ in range(AUTOMATION_ROUNDS):
        evaluation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        cursor = evaluation.cursor
        if not evaluation.total_requested:
            return
        # As the sensor launches them: one run per set of requested dates, over their range (dbt's daily steps
        # take a range in one run), and one run of the unpartitioned assets.
        groups: dict[frozenset[str | None], list[dg.AssetKey]] = {}
        for key in keys:
            requested = evaluation.get_requested_partitions(key)
            if requested:
                groups.setdefault(frozenset(requested), []).append(key)
        for requested, selection in groups.items():
            dates = sorted(p for p in requested if p is not None)
            tags = (
                {"dagster/asset_partition_range_start": dates[0], "dagster/asset_partition_range_end": dates[-1]}
                if dates
                else {}
            )
            run = job.execute_in_process(
                instance=instance, asset_selection=selection, tags=tags, run_config=QUIET, raise_on_error=False
            )
            _collect_run(run, summary)
            for event in run.get_asset_materialization_events():
                if event.asset_key == CRM_SCORES_KEY:
                    metadata = event.materialization.metadata
                    summary.crm_sync = {k: metadata[k].value for k in ("inserted", "updated", "deleted", "unchanged")}


def _collect_run(run: dg.ExecuteInProcessResult, summary: DemoSummary) -> None:
    if not run.success:
        summary.failed_runs.append(f"{run.job_def.name} {run.run_id}")
    # A check once per run: a run over several days records its one result on each of them.
    summary.gates.extend(
        dict.fromkeys((e.asset_key.to_user_string(), e.check_name, e.passed) for e in run.get_asset_check_evaluations())
    )


def _collect_tables(summary: DemoSummary) -> None:
    """Row counts of every layer and the reconciliation, read from the lake in place."""
    lake = settings.lake()
    with lake.connect() as con:
        tables = lake.attach(con)
        for relation in tables:
            layer, table = relation.split(".")
            rows = con.execute(f"SELECT count(*) FROM {relation}").fetchone()[0]
            if layer == "bronze":
                summary.bronze_rows[table] = rows
            elif layer == "quarantine":
                summary.quarantined_rows[table] = rows
                for (reason,) in con.execute(f"SELECT unnest(_reasons) FROM {relation}").fetchall():
                    summary.quarantine_reasons[reason] += 1
            else:
                summary.lake_rows[relation] = rows
        if "gold.payout_reconciliation" in tables:
            summary.reconciliation = con.execute(
                "SELECT payout_id, status, expected_net_minor, net_paid_minor, currency "
                "FROM gold.payout_reconciliation ORDER BY payout_id"
            ).fetchall()
