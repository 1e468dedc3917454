"""`medallion demo`: the whole platform end to end, on the embedded defaults, in one process.

It starts the embedded SFTP server, drops several days of partner files (with their dirt, plus one
file with a broken name and one with a wrong checksum) into the inbox, lets the inbox sensor find them,
runs the intake job per file, then refines silver and gold behind their gates, all against the real
Dagster instance in $DAGSTER_HOME so that `make dev` shows the history afterwards.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import duckdb
from deltalake import DeltaTable

from dagster_project import settings
from dagster_project.lib.feeds import CUSTOMERS
from dagster_project.lib.sample_data import GeneratedFile, write_customer_files
from dagster_project.lib.sftp import SftpClient
from dagster_project.services.sftp_server import EmbeddedSftpServer


# The demo prints its own summary; the runs' step-by-step logs stay in the instance (and the UI).
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class DemoSummary:
    files_uploaded: int = 0
    intake_runs: int = 0
    remote_quarantine: list[str] = field(default_factory=list)
    bronze_rows: dict[str, int] = field(default_factory=dict)
    quarantined_rows: dict[str, int] = field(default_factory=dict)
    quarantine_reasons: Counter[str] = field(default_factory=Counter)
    warehouse_rows: dict[str, int] = field(default_factory=dict)
    gates: list[tuple[str, str, bool]] = field(default_factory=list)  # (asset, check, passed)
    failed_runs: list[str] = field(default_factory=list)
    expected: list[GeneratedFile] = field(default_factory=list)

    def render(self) -> str:
        lines = ["", "Medallion demo summary", "=" * 22]
        lines.append(f"files uploaded to the SFTP inbox: {self.files_uploaded}; intake runs: {self.intake_runs}")
        for name in self.remote_quarantine:
            lines.append(f"  rejected at the inbox: {name}")
        lines.append("bronze (Delta):")
        for table, rows in self.bronze_rows.items():
            lines.append(f"  bronze.{table:<28} {rows:>8} rows")
        for table, rows in self.quarantined_rows.items():
            lines.append(f"  quarantine.{table:<24} {rows:>8} rows")
        for reason, count in self.quarantine_reasons.most_common():
            lines.append(f"      {count:>4} x {reason}")
        lines.append("warehouse (DuckDB):")
        for table, rows in self.warehouse_rows.items():
            lines.append(f"  {table:<35} {rows:>8} rows")
        lines.append("gates and checks:")
        for (asset, check, passed), count in Counter(self.gates).items():
            times = f" (x{count})" if count > 1 else ""
            lines.append(f"  {'PASS' if passed else 'FAIL'}  {asset} :: {check}{times}")
        for run in self.failed_runs:
            lines.append(f"run failed: {run}")
        return "\n".join(lines)


def prepare_instance_home() -> Path:
    """Point DAGSTER_HOME at the embedded instance and give it the platform's dagster.yaml."""
    home = settings.dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        shutil.copy(settings.project_root() / "infra" / "dagster" / "dagster.yaml", config)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def ensure_local_pii_key() -> None:
    """Give the embedded platform a PII key when none is configured: random, made once, kept under
    .data/ with owner-only permissions (like the embedded SFTP server's keys). Deployments set the
    variable from a secret instead."""
    if settings.pii_hmac_key_configured():
        return
    path = settings.data_dir() / "secrets" / "pii_hmac_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    os.environ["MEDALLION_PII_HMAC_KEY"] = path.read_text().strip()


def demo_days(count: int, today: dt.date | None = None) -> list[dt.date]:
    today = today or dt.date.today()
    return [today - dt.timedelta(days=count - i) for i in range(count)]


def write_sample_files(out_dir: Path, days: list[dt.date]) -> tuple[list[GeneratedFile], list[Path]]:
    """The good partner files and two that the inbox must refuse (a broken name, a wrong CRC32)."""
    files = write_customer_files(out_dir, days)
    broken_name = out_dir / f"acme_customers_{days[-1].isoformat()}_final.csv"
    broken_name.write_bytes(files[-1].path.read_bytes())
    wrong_crc = out_dir / CUSTOMERS.file_name(days[-1].isoformat(), 99, "DEADBEEF")
    wrong_crc.write_bytes(files[-1].path.read_bytes())
    return files, [broken_name, wrong_crc]


def upload(client: SftpClient, paths: list[Path], inbox: str) -> None:
    for path in paths:
        client.upload(path, f"{inbox}/{path.name}")


def run_demo(days: int = 5) -> DemoSummary:
    from dagster_project.definitions import defs as load_defs
    from dagster_project.defs.sftp.resources import SftpResource

    prepare_instance_home()
    ensure_local_pii_key()
    summary = DemoSummary()
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
    ):
        os.environ["MEDALLION_SFTP_PORT"] = str(server.port)  # the resource reads it per call
        good, bad = write_sample_files(settings.data_dir() / "samples" / "customers", demo_days(days))
        summary.expected = good
        sftp = SftpResource()
        with sftp.client() as client:
            upload(client, [f.path for f in good] + bad, sftp.layout().inbox)
        summary.files_uploaded = len(good) + len(bad)

        defs = load_defs()
        sensor = defs.resolve_sensor_def("sftp_inbox_sensor")
        cursor = None
        requests: list[dg.RunRequest] = []
        # Two looks at the inbox: a file is taken once its size and mtime held still between them.
        for _ in range(2):
            context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"sftp": sftp})
            result = sensor(context)
            cursor = result.cursor
            requests.extend(result.run_requests or [])

        partitions = sorted({r.partition_key for r in requests})
        for request in requests:
            job = defs.resolve_job_def(request.job_name)
            run = job.execute_in_process(
                instance=instance,
                partition_key=request.partition_key,
                run_config={**request.run_config, **QUIET},
                tags=request.tags,
                raise_on_error=False,
            )
            summary.intake_runs += 1
            _collect_run(run, summary)
        with sftp.client() as client:
            summary.remote_quarantine = sorted(
                f.name for f in client.list_dir(sftp.layout().quarantine) if not f.name.endswith(".reason.txt")
            )

        refine = defs.resolve_implicit_global_asset_job_def()
        graph = defs.resolve_asset_graph()
        downstream = dg.AssetSelection.groups("silver", "gold").resolve(graph)
        if downstream and partitions:
            run = refine.execute_in_process(
                instance=instance,
                asset_selection=list(downstream),
                run_config=QUIET,
                tags={
                    "dagster/asset_partition_range_start": partitions[0],
                    "dagster/asset_partition_range_end": partitions[-1],
                },
                raise_on_error=False,
            )
            _collect_run(run, summary)
    _collect_tables(summary)
    return summary


def _collect_run(run: dg.ExecuteInProcessResult, summary: DemoSummary) -> None:
    if not run.success:
        summary.failed_runs.append(f"{run.job_def.name} {run.run_id}")
    for evaluation in run.get_asset_check_evaluations():
        summary.gates.append((evaluation.asset_key.to_user_string(), evaluation.check_name, evaluation.passed))


def _collect_tables(summary: DemoSummary) -> None:
    lake = settings.lake_root()
    for layer, target in (("bronze", summary.bronze_rows), ("quarantine", summary.quarantined_rows)):
        for path in sorted((lake / layer).glob("*")):
            table = DeltaTable(str(path))
            target[path.name] = table.to_pyarrow_dataset().count_rows()
            if layer == "quarantine":
                reasons = table.to_pyarrow_table(columns=["_reasons"]).column("_reasons").to_pylist()
                summary.quarantine_reasons.update(r for rs in reasons for r in rs)
    warehouse = settings.warehouse_path()
    if warehouse.exists():
        with duckdb.connect(str(warehouse), read_only=True) as con:
            tables = con.execute(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_schema IN ('silver', 'gold') ORDER BY table_schema, table_name"
            ).fetchall()
            for schema, name in tables:
                count = con.execute(f'SELECT count(*) FROM "{schema}"."{name}"').fetchone()[0]
                summary.warehouse_rows[f"{schema}.{name}"] = count
