from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from dagster_project import settings
from dagster_project.defs.transform.resources import dbt_env

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


def bronze_customer(customer_id: int, business_date: str, updated_at: str, email: str, status: str,
                    row: int) -> dict[str, Any]:
    day = dt.date.fromisoformat(business_date)
    stamp = dt.datetime.fromisoformat(updated_at).replace(tzinfo=dt.UTC)
    return {
        "customer_id": customer_id, "email": email, "first_name": "Ada", "last_name": None,
        "country_code": "GB", "signup_date": dt.date(2024, 6, 1), "lifetime_value": Decimal("10.00"),
        "status": status, "updated_at": stamp, "business_date": day, "_source": "acme_customers",
        "_source_file": f"acme_customers_{business_date}_seq-00001_crc32-00000000.csv", "_source_row": row,
        "_checksum_sha256": "0" * 64, "_schema_version": 1, "_received_at": stamp, "_ingested_at": stamp,
        "_run_id": "test-run",
    }


@pytest.fixture(scope="session")
def parsed_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Parse the dbt project as the Makefile does, so the assets module can load its manifest."""
    scratch = tmp_path_factory.mktemp("parse")
    project_dir = settings.dbt_project_dir()
    env = {"MEDALLION_LAKE_ROOT": str(scratch / "lake"), "MEDALLION_WAREHOUSE_PATH": str(scratch / "warehouse.duckdb")}
    subprocess.run(
        [str(Path(sys.executable).with_name("dbt")), "parse", "--quiet",
         "--project-dir", str(project_dir), "--profiles-dir", str(project_dir)],
        check=True, cwd=project_dir, env={**os.environ, **env},
    )
    return project_dir / "target" / "manifest.json"


@pytest.fixture
def lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Bronze customers for two business dates in a tmp lake; the warehouse is a tmp DuckDB file."""
    monkeypatch.setenv("MEDALLION_LAKE_ROOT", str(tmp_path / "lake"))
    monkeypatch.setenv("MEDALLION_WAREHOUSE_PATH", str(tmp_path / "warehouse" / "warehouse.duckdb"))
    monkeypatch.setenv("MEDALLION_PII_HMAC_KEY", PII_KEY)
    assert dbt_env()["MEDALLION_LAKE_ROOT"] == str(tmp_path / "lake")
    rows = [
        bronze_customer(1, "2025-01-01", "2025-01-01T08:00:00", "ada@example.com", "active", 1),
        bronze_customer(2, "2025-01-01", "2025-01-01T08:00:00", "bob@example.org", "active", 2),
        bronze_customer(1, "2025-01-02", "2025-01-02T08:00:00", "ada@example.com", "closed", 1),
    ]
    write_deltalake(
        str(settings.lake_root() / "bronze" / "customers"),
        pa.Table.from_pylist(rows, schema=BRONZE_CUSTOMERS_SCHEMA),
        partition_by=["business_date"],
    )
    return settings.lake_root()
