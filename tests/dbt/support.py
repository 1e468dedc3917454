"""Bronze customers records as the bronze hop writes them, for tests of the dbt project and its assets."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
from deltalake import write_deltalake

from dagster_project import settings

PII_KEY = "test-only-hmac-key-0123456789abcdef"

BRONZE_CUSTOMERS_SCHEMA = pa.schema(
    [
        ("customer_id", pa.int64()),
        ("email", pa.string()),
        ("first_name", pa.string()),
        ("last_name", pa.string()),
        ("country_code", pa.string()),
        ("signup_date", pa.date32()),
        ("lifetime_value", pa.decimal128(12, 2)),
        ("status", pa.string()),
        ("updated_at", pa.timestamp("us", tz="UTC")),
        ("business_date", pa.date32()),
        ("_source", pa.string()),
        ("_source_file", pa.string()),
        ("_source_row", pa.int64()),
        ("_checksum_sha256", pa.string()),
        ("_schema_version", pa.int32()),
        ("_received_at", pa.timestamp("us", tz="UTC")),
        ("_ingested_at", pa.timestamp("us", tz="UTC")),
        ("_run_id", pa.string()),
    ]
)


def customer(
    customer_id: int,
    business_date: str,
    updated_at: str,
    *,
    email: str,
    first_name: str | None = "Ada",
    last_name: str | None = "Lovelace",
    status: str = "active",
    country_code: str = "GB",
    lifetime_value: str = "10.00",
    signup_date: str = "2024-06-01",
    row: int = 1,
) -> dict[str, Any]:
    """One bronze customers record; `updated_at` is an ISO time in UTC."""
    day = dt.date.fromisoformat(business_date)
    return {
        "customer_id": customer_id,
        "email": email,
        "first_name": first_name,
        "last_name": last_name,
        "country_code": country_code,
        "signup_date": dt.date.fromisoformat(signup_date),
        "lifetime_value": Decimal(lifetime_value),
        "status": status,
        "updated_at": dt.datetime.fromisoformat(updated_at).replace(tzinfo=dt.UTC),
        "business_date": day,
        "_source": "acme_customers",
        "_source_file": f"acme_customers_{business_date}_seq-00001_crc32-00000000.csv",
        "_source_row": row,
        "_checksum_sha256": "0" * 64,
        "_schema_version": 1,
        "_received_at": dt.datetime.combine(day, dt.time(6), tzinfo=dt.UTC),
        "_ingested_at": dt.datetime.combine(day, dt.time(6, 5), tzinfo=dt.UTC),
        "_run_id": "test-run",
    }


def write_bronze_partition(lake_root: Path, business_date: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Replace one business_date partition of bronze/customers, as a bronze re-materialization does."""
    table = pa.Table.from_pylist(list(rows), schema=BRONZE_CUSTOMERS_SCHEMA)
    path = lake_root / "bronze" / "customers"
    if path.exists():
        write_deltalake(
            str(path),
            table,
            mode="overwrite",
            predicate=f"business_date = '{business_date}'",
            partition_by=["business_date"],
        )
    else:
        write_deltalake(str(path), table, mode="overwrite", partition_by=["business_date"])


def window(first: str, last: str | None = None) -> tuple[str, str]:
    """The business dates a partition run covers: one day, or `first` to `last`."""
    return first, last or first


class Dbt(Protocol):
    def __call__(
        self, *args: str, window: Sequence[str] | None = None, by_hand: bool = False, check: bool = True
    ) -> subprocess.CompletedProcess[str]: ...


def dbt_command(workdir: Path, *args: str) -> list[str]:
    """The dbt CLI on the project, with the session's target and log folders."""
    project_dir = str(settings.dbt_project_dir())
    return [
        str(Path(sys.executable).with_name("dbt")),
        *args,
        *("--project-dir", project_dir, "--profiles-dir", project_dir),
        *("--target-path", str(workdir / "target"), "--log-path", str(workdir / "logs")),
    ]


def failing_tests(workdir: Path) -> dict[str, int]:
    """Failing rows per data test of the last dbt command (its run_results.json)."""
    results = json.loads((workdir / "target" / "run_results.json").read_text())["results"]
    return {r["unique_id"].split(".")[2]: r["failures"] for r in results if r["status"] == "fail"}
