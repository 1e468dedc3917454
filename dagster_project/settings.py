"""The one place that reads the environment.

Every function here reads `os.environ` when called, never at import time, so tests can set variables
with `monkeypatch.setenv` without reloading modules. `.env.example` lists every variable.
Dagster's resources are built from these values when the definitions load, so the UI shows what a run
uses. Secrets are not read for Dagster here: they reach it through `dg.EnvVar`, dbt through `env_var()`
and the webhook receiver through `webhook_secrets()` and `webhook_inbox_url()` at its set-up. A database
URL may carry a password, so a configured one is bound to resources by reference (`is_configured`).
Nothing changes `os.environ`: a process that needs other values starts a child with `child_environment()`.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dagster_project.lib.business_dates import default_first_business_date, parse_first_business_date
from dagster_project.lib.lake import Lake

# Variables whose value may hold a password (a PostgreSQL URL): bound to resources as `dg.EnvVar`.
WEBHOOK_INBOX_URL = "MEDALLION_WEBHOOK_INBOX_URL"
REVERSE_ETL_URL = "MEDALLION_REVERSE_ETL_URL"
# Alert channels: a webhook URL may carry a token in its path (Slack's always does), an SMTP password is one.
ALERT_WEBHOOK_URL = "MEDALLION_ALERT_WEBHOOK_URL"
ALERT_SLACK_WEBHOOK_URL = "MEDALLION_ALERT_SLACK_WEBHOOK_URL"
ALERT_SMTP_PASSWORD = "MEDALLION_ALERT_SMTP_PASSWORD"


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Root of everything the embedded platform writes (git-ignored)."""
    return Path(_env("MEDALLION_DATA_DIR", str(project_root() / ".data"))).resolve()


def lake_root() -> str:
    """The lake's root, shared by Dagster and dbt: a local path or an s3://, gs:// or az:// URI.

    Never passed through `Path`: `Path("s3://b/lake")` is a local folder named `s3:`."""
    return _env("MEDALLION_LAKE_ROOT", str(data_dir() / "lake"))


# The standard variables of each object store, read for the lake; unset ones are left to the libraries'
# own defaults (workload identity: IRSA, GKE and Azure workload identity, instance profiles).
LAKE_STORAGE_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ALLOW_HTTP",
    "AWS_COPY_IF_NOT_EXISTS",
    "AWS_CONDITIONAL_PUT",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_SERVICE_ACCOUNT",
    "GOOGLE_HMAC_KEY_ID",
    "GOOGLE_HMAC_SECRET",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
)


def lake_storage_options() -> dict[str, str]:
    """Credentials and endpoint of the lake's object store, from the standard variables that are set.

    A plain-HTTP endpoint is allowed only on loopback (a local MinIO or test server), unless
    AWS_ALLOW_HTTP says so explicitly."""
    options = {name: os.environ[name].strip() for name in LAKE_STORAGE_VARIABLES if os.environ.get(name, "").strip()}
    endpoint = options.get("AWS_ENDPOINT_URL", "")
    if endpoint.startswith("http://") and "AWS_ALLOW_HTTP" not in options:
        host = endpoint.removeprefix("http://").split("/", 1)[0].rsplit(":", 1)[0]
        if host in ("127.0.0.1", "localhost", "[::1]"):
            options["AWS_ALLOW_HTTP"] = "true"
    if "AWS_ENDPOINT_URL" in options and "AWS_REGION" not in options:
        options["AWS_REGION"] = "us-east-1"  # S3-compatible stores ignore it, but the clients need one
    return options


def lake() -> Lake:
    """The lake (root and storage options); `LakeError` when MEDALLION_LAKE_ROOT cannot be used."""
    return Lake.parse(lake_root(), lake_storage_options())


def dbt_project_dir() -> Path:
    return project_root() / "dbt_project"


def dagster_home() -> Path:
    return Path(_env("DAGSTER_HOME", str(data_dir() / "dagster"))).resolve()


@dataclass(frozen=True)
class SftpSettings:
    host: str
    port: int
    username: str
    private_key_path: Path
    known_hosts_path: Path
    inbox_dir: str
    archive_dir: str
    quarantine_dir: str
    stable_seconds: float
    intake_attempts: int
    intake_backoff_seconds: float


def sftp_keys_dir() -> Path:
    """Where the embedded SFTP server keeps its generated host and client keys."""
    return Path(_env("MEDALLION_SFTP_KEYS_DIR", str(data_dir() / "sftp" / "keys"))).resolve()


def sftp_root() -> Path:
    """Directory the embedded SFTP server serves (chroot)."""
    return Path(_env("MEDALLION_SFTP_ROOT", str(data_dir() / "sftp" / "root"))).resolve()


def sftp() -> SftpSettings:
    keys = sftp_keys_dir()
    return SftpSettings(
        host=_env("MEDALLION_SFTP_HOST", "127.0.0.1"),
        port=int(_env("MEDALLION_SFTP_PORT", "2222")),
        username=_env("MEDALLION_SFTP_USER", "acme"),
        private_key_path=Path(_env("MEDALLION_SFTP_PRIVATE_KEY", str(keys / "client_ed25519"))),
        known_hosts_path=Path(_env("MEDALLION_SFTP_KNOWN_HOSTS", str(keys / "known_hosts"))),
        inbox_dir=_env("MEDALLION_SFTP_INBOX", "inbox"),
        archive_dir=_env("MEDALLION_SFTP_ARCHIVE", "archive"),
        quarantine_dir=_env("MEDALLION_SFTP_QUARANTINE", "quarantine"),
        stable_seconds=sftp_stable_seconds(),
        intake_attempts=int(_env("MEDALLION_SFTP_INTAKE_ATTEMPTS", "5")),
        intake_backoff_seconds=float(_env("MEDALLION_SFTP_INTAKE_BACKOFF_SECONDS", "30")),
    )


def sftp_stable_seconds() -> float:
    """How long a remote file's size and mtime must stay unchanged (on this side's clock, from the first look
    that saw them) before it is taken: an upload that stalls for less is not taken half-written."""
    return float(_env("MEDALLION_SFTP_STABLE_SECONDS", "30"))


@dataclass(frozen=True)
class RetentionSettings:
    """How long each layer keeps what it holds, applied by the daily `retention` job. None keeps it for ever
    (the variable set to 0)."""

    landing_days: int | None  # landed files by business date; for ever by default: bronze is rebuilt from them
    quarantine_days: int | None  # quarantine rows by business date (a bronze re-run quarantines them again)
    delta_versions_hours: int | None  # old files and log entries of every Delta table: how far time travel reaches
    run_history_days: int | None  # finished Dagster runs and their event logs
    sftp_archive_days: int | None  # the SFTP server's archive/ (copies of files already landed)
    sftp_quarantine_days: int | None  # its quarantine/ (rejected files: the only copy of their bytes)
    uploads_hours: int | None  # leftovers of interrupted landings under landing/_uploads
    cron: str  # when the job runs, in UTC


def _kept_for(name: str, default: int) -> int | None:
    """A retention span from `name`: a whole number of days or hours, 0 for ever (None)."""
    raw = _env(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(
            f"{name}={raw!r}: give a whole number (of days or hours, as its name says), 0 to keep for ever"
        )
    return value or None


def retention() -> RetentionSettings:
    return RetentionSettings(
        landing_days=_kept_for("MEDALLION_RETENTION_LANDING_DAYS", 0),
        quarantine_days=_kept_for("MEDALLION_RETENTION_QUARANTINE_DAYS", 90),
        # deltalake's own default vacuum retention (delta.deletedFileRetentionDuration, a week); the tables'
        # log retention is set to the same (instead of Delta's 30 days), so old versions leave entirely.
        delta_versions_hours=_kept_for("MEDALLION_RETENTION_DELTA_VERSIONS_HOURS", 168),
        run_history_days=_kept_for("MEDALLION_RETENTION_RUN_HISTORY_DAYS", 30),
        sftp_archive_days=_kept_for("MEDALLION_RETENTION_SFTP_ARCHIVE_DAYS", 30),
        sftp_quarantine_days=_kept_for("MEDALLION_RETENTION_SFTP_QUARANTINE_DAYS", 90),
        uploads_hours=_kept_for("MEDALLION_RETENTION_UPLOADS_HOURS", 24),
        cron=_env("MEDALLION_RETENTION_CRON", "30 3 * * *"),
    )


FIRST_BUSINESS_DATE = "MEDALLION_FIRST_BUSINESS_DATE"


def first_business_date() -> dt.date:
    """The first business date the platform keeps: every daily partition (bronze, silver, gold) starts here,
    and the webhook inbox files an event created earlier under the day it was received.

    Unset, the first day of the month three months back (UTC): partitions near the data, the same in every
    process started the same month. A deployment keeping more history sets it, and sets it earlier to
    backfill older days; it is read when the code location loads."""
    raw = os.environ.get(FIRST_BUSINESS_DATE, "").strip()
    if not raw:
        return default_first_business_date(dt.datetime.now(dt.UTC).date())
    try:
        return parse_first_business_date(raw)
    except ValueError as exc:
        raise ValueError(f"{FIRST_BUSINESS_DATE}: {exc}") from None


def is_configured(variable: str) -> bool:
    """Whether a variable is set, without reading it here (secrets go by reference, see above)."""
    return bool(os.environ.get(variable, "").strip())


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment for a child process: this process's, with `extra` on top (this one is unchanged)."""
    return {**os.environ, **extra}


PII_HMAC_KEY = "MEDALLION_PII_HMAC_KEY"


def pii_hmac_key() -> str:
    """The PII HMAC key, for `medallion erase` (dbt's plugin and Dagster read it by reference); empty if unset."""
    return os.environ.get(PII_HMAC_KEY, "").strip()


def webhook_inbox_default_url() -> str:
    """The embedded inbox (SQLite under the data folder) used when MEDALLION_WEBHOOK_INBOX_URL is unset."""
    return f"sqlite:///{data_dir() / 'webhooks' / 'inbox.sqlite'}"


def webhook_inbox_url() -> str:
    """The inbox URL for the webhook receiver (a service, not Dagster): it may carry a password."""
    return _env(WEBHOOK_INBOX_URL, webhook_inbox_default_url())


def webhook_max_body_bytes() -> int:
    return int(_env("MEDALLION_WEBHOOK_MAX_BODY_BYTES", str(256 * 1024)))


def webhook_tolerance_seconds() -> int:
    return int(_env("MEDALLION_WEBHOOK_TOLERANCE_SECONDS", "300"))


def webhook_max_header_bytes() -> int:
    """Largest request head (request line and header fields) the receiver reads; larger ones get 431."""
    return int(_env("MEDALLION_WEBHOOK_MAX_HEADER_BYTES", str(16 * 1024)))


def webhook_max_header_count() -> int:
    """Most header fields a request may carry; more get 431."""
    return int(_env("MEDALLION_WEBHOOK_MAX_HEADER_COUNT", "100"))


def webhook_header_timeout_seconds() -> float:
    """Time a client has to send a whole request head; a slower one gets 408 and is disconnected."""
    return float(_env("MEDALLION_WEBHOOK_HEADER_TIMEOUT_SECONDS", "10"))


def webhook_body_timeout_seconds() -> float:
    """Time a sender has to send a whole body once its head arrived; a slower one gets 408 and is disconnected."""
    return float(_env("MEDALLION_WEBHOOK_BODY_TIMEOUT_SECONDS", "15"))


def webhook_workers() -> int:
    """Receiver worker processes in one pod or host (uvicorn workers sharing its port)."""
    return int(_env("MEDALLION_WEBHOOK_WORKERS", "1"))


def webhook_secrets(provider: str) -> list[str]:
    """Signing secrets for a provider, newest first; several during rotation (comma separated)."""
    raw = os.environ.get(f"MEDALLION_WEBHOOK_SECRETS_{provider.upper()}", "")
    return [s.strip() for s in raw.split(",") if s.strip()]


def reverse_etl_default_url() -> str:
    """The embedded CRM table's database (SQLite) used when MEDALLION_REVERSE_ETL_URL is unset."""
    return f"sqlite:///{data_dir() / 'crm.sqlite'}"


def airbyte_server_url() -> str:
    """Empty when no Airbyte server is configured (the sync schedule then stays off)."""
    return os.environ.get("MEDALLION_AIRBYTE_SERVER_URL", "").strip()


def airbyte_connection_id() -> str:
    return _env("MEDALLION_AIRBYTE_CONNECTION_ID", "")


def airbyte_poll_interval_seconds() -> float:
    """First wait between job status polls; it grows by half each poll up to a minute."""
    return float(_env("MEDALLION_AIRBYTE_POLL_INTERVAL_SECONDS", "5"))


def airbyte_max_wait_seconds() -> float:
    """How long one sync may take, trigger included, before it is cancelled and reported as failed."""
    return float(_env("MEDALLION_AIRBYTE_MAX_WAIT_SECONDS", "3600"))


def airbyte_request_timeout_seconds() -> float:
    return float(_env("MEDALLION_AIRBYTE_REQUEST_TIMEOUT_SECONDS", "30"))


def reverse_etl_table() -> str:
    """Target table as `schema.table`; the schema is used on PostgreSQL and ignored on SQLite."""
    return _env("MEDALLION_REVERSE_ETL_TABLE", "crm.customer_scores")


def reverse_etl_batch_size() -> int:
    return int(_env("MEDALLION_REVERSE_ETL_BATCH_SIZE", "1000"))


@dataclass(frozen=True)
class AlertEmailSettings:
    """Where e-mail alerts go; the SMTP password is not here (bound by reference, ALERT_SMTP_PASSWORD)."""

    host: str
    port: int
    username: str
    starttls: bool
    sender: str
    recipients: tuple[str, ...]


def alert_email() -> AlertEmailSettings | None:
    """The e-mail alert channel, or None unless an SMTP host and at least one recipient are set."""
    host = _env("MEDALLION_ALERT_SMTP_HOST", "")
    recipients = tuple(r.strip() for r in _env("MEDALLION_ALERT_EMAIL_TO", "").split(",") if r.strip())
    if not host or not recipients:
        return None
    return AlertEmailSettings(
        host=host,
        port=int(_env("MEDALLION_ALERT_SMTP_PORT", "587")),
        username=_env("MEDALLION_ALERT_SMTP_USER", ""),
        starttls=_env("MEDALLION_ALERT_SMTP_STARTTLS", "true").lower() in ("1", "true", "yes"),
        sender=_env("MEDALLION_ALERT_EMAIL_FROM", "medallion@localhost"),
        recipients=recipients,
    )


def alert_channels() -> list[str]:
    """The alert channels configured (webhook, slack, email); none means the alert sensors stay off."""
    urls = (("webhook", ALERT_WEBHOOK_URL), ("slack", ALERT_SLACK_WEBHOOK_URL))
    return [name for name, variable in urls if is_configured(variable)] + (["email"] if alert_email() else [])


def dagster_ui_url() -> str:
    """The Dagster UI's address as people reach it, for links in alerts."""
    return _env("MEDALLION_DAGSTER_UI_URL", "http://127.0.0.1:3000").rstrip("/")


def running_under_dagster_dev() -> bool:
    """Whether this process was started by `dagster dev` (which sets DAGSTER_IS_DEV_CLI): the dbt project is
    then parsed again when the code location loads, so model edits show without a rebuild."""
    return bool(os.environ.get("DAGSTER_IS_DEV_CLI", "").strip())
