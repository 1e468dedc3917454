"""Every gold row (and every charge of stg_psp__charges) traces back to the bytes it came from: the documented
lineage queries of docs/lineage.md, run as written on a lake built the way the platform builds it (partner
files and Airbyte output landed, webhook events in the inbox, bronze loaded by the bronze engine, silver and
gold by dbt), resolve each row to landing files whose bytes hash to the sha256 bronze and the manifest
record, or to webhook events held in the inbox with that body digest.

The queries are read out of the document itself, so the document cannot drift from what the lake holds."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import obstore
import pytest

from dagster_project import settings
from dagster_project.lib.bronze.engine import load_partition
from dagster_project.lib.bronze.readers.airbyte_records import AirbyteRecordsReader
from dagster_project.lib.bronze.readers.partner_files import PartnerFilesReader
from dagster_project.lib.bronze.readers.webhook_events import WebhookEventsReader
from dagster_project.lib.intake.inbox import InboundEvent, Inbox, migrate
from dagster_project.lib.intake.landing import MANIFEST_SUFFIX, Manifest, land_file, landed_files
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.naming import parse_file_name
from dagster_project.lib.sources.registry import CUSTOMERS, ORDERS, PAYMENT_EVENTS, PSP_PAYOUTS
from dagster_project.samples.orders import land_sample_orders
from dagster_project.samples.partner_files import write_customer_files
from dagster_project.samples.payments import build_payments_sample
from tests.dbt.support import Dbt

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dbt-history")]  # dbt builds reusing one parse, on one worker

Connect = Callable[[], duckdb.DuckDBPyConnection]

DOC = Path(__file__).resolve().parents[2] / "docs" / "lineage.md"
DAYS = [dt.date(2025, 11, 3), dt.date(2025, 11, 4), dt.date(2025, 11, 5)]
RECEIVED_AT = dt.datetime(2025, 11, 6, 6, 0, tzinfo=dt.UTC)
# What every documented query returns besides the key of the row it traces.
ORIGIN_COLUMNS = (
    "source_table",
    "source_business_date",
    "source_file",
    "source_row",
    "landed_path",
    "sha256",
    "event_id",
)


def documented_queries(text: str) -> dict[str, tuple[list[str], str]]:
    """`<layer>.<table>` -> (its key columns, its lineage query), from the document's sections: a heading
    `### <layer>.<table>`, a line `Key: `a`, `b``, and the first ```sql block after them."""
    sections = re.split(r"^### ", text, flags=re.MULTILINE)[1:]
    queries = {}
    for section in sections:
        name = section.split("\n", 1)[0].strip()
        key = re.search(r"^Key: (.+)$", section, flags=re.MULTILINE)
        sql = re.search(r"```sql\n(.*?)```", section, flags=re.DOTALL)
        assert key and sql, f"docs/lineage.md, section {name}: a 'Key:' line and a sql block are required"
        queries[name] = (re.findall(r"`([a-z_]+)`", key.group(1)), sql.group(1))
    return queries


def _land_partner_file(lake: Lake, path: Path, staging: Path) -> None:
    staged = staging / path.name
    shutil.copyfile(path, staged)
    land_file(
        lake,
        parse_file_name(path.name),
        staged,
        source="sftp",
        source_uri=f"sftp://partner/{path.name}",
        received_at=RECEIVED_AT,
    )


def build_lake(lake: Lake, inbox_url: str, work: Path) -> None:
    """Three days of every source gold reads, landed and loaded into bronze as the platform does it."""
    staging = work / "staging"
    staging.mkdir(parents=True)
    customers = write_customer_files(work / "customers", DAYS, customers=40, changes_per_day=15, seed=11)
    payments = build_payments_sample(work / "payments", DAYS, secret="whsec_lineage_test")
    for generated in [*customers, *payments.payout_files]:
        _land_partner_file(lake, generated.path, staging)
    for spec in (CUSTOMERS, PSP_PAYOUTS):
        for day in sorted({g.business_date for g in [*customers, *payments.payout_files]}):
            manifests = landed_files(lake, spec.name, day)
            if manifests:
                load_partition(spec, PartnerFilesReader(spec, manifests, day, lake=lake), lake=lake, run_id="build")

    migrate(inbox_url)
    with Inbox(inbox_url) as inbox:
        for delivery in payments.deliveries:
            if delivery.kind == "tampered":  # the receiver refuses it: its signature does not verify
                continue
            body = json.loads(delivery.body)
            created = dt.datetime.fromtimestamp(body["created"], dt.UTC)
            inbox.store(
                InboundEvent(
                    "stripe",
                    body["id"],
                    body["type"],
                    created,
                    delivery.body,
                    received_at=created + dt.timedelta(minutes=1),
                )
            )
        for day in inbox.event_dates("stripe"):
            events = inbox.iter_for_dates("stripe", [day])
            reader = WebhookEventsReader(PAYMENT_EVENTS, events, day.isoformat())
            load_partition(PAYMENT_EVENTS, reader, lake=lake, run_id="build")

    land_sample_orders(lake, DAYS, customers=40)
    for day in DAYS:
        load_partition(ORDERS, AirbyteRecordsReader(ORDERS, lake, day.isoformat()), lake=lake, run_id="build")


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


@pytest.fixture
def built(dbt: Dbt, tmp_path: Path) -> str:
    """The lake of the `lake` fixture (which `dbt` runs on), built and transformed by dbt; returns the inbox URL."""
    inbox_url = f"sqlite:///{tmp_path / 'inbox.sqlite'}"
    build_lake(settings.lake(), inbox_url, tmp_path / "work")
    dbt("run")
    return inbox_url


def test_every_gold_row_traces_to_landed_bytes_or_inbox_events_by_the_documented_queries(
    built: str, warehouse: Connect
) -> None:
    queries = documented_queries(DOC.read_text())
    lake = settings.lake()
    assert set(queries) == {f"gold.{name}" for name in lake.tables("gold")} | {"silver.stg_psp__charges"}
    con = warehouse()
    with Inbox(built) as inbox:  # inbox id -> (event id, body digest), as bronze's `_source_row` names it
        stored = {
            e.id: (e.event_id, e.body_sha256)
            for day in inbox.event_dates("stripe")
            for e in inbox.read_for_dates("stripe", [day])
        }
    landed: dict[str, str] = {}  # landed path -> sha256 of its bytes, checked against its manifest

    for table, (key, sql) in queries.items():
        rows = _rows(con, sql)
        assert rows and set(ORIGIN_COLUMNS) <= set(rows[0]), f"{table}: the query must return {ORIGIN_COLUMNS}"
        traced = {tuple(row[k] for k in key) for row in rows}
        keys = [tuple(r.values()) for r in _rows(con, f"select {', '.join(key)} from {table}")]
        assert len(set(keys)) == len(keys), f"{table}: {key} is not the table's key"
        assert traced == set(keys), f"{table}: rows the documented query does not trace"
        for row in rows:
            if row["event_id"] is not None:  # a webhook event: in the inbox under that id, with that body
                assert row["landed_path"] is None
                assert stored[row["source_row"]] == (row["event_id"], row["sha256"]), (table, row)
            else:  # a landed file: its bytes (and its manifest) give the digest bronze recorded
                path = row["landed_path"]
                if path not in landed:
                    landed[path] = _verified_sha256(lake, path, row["source_table"])
                assert landed[path] == row["sha256"], (table, row)
    assert {path.split("/")[1] for path in landed} == {"customers", "psp_payouts", "shop_orders"}


def _verified_sha256(lake: Lake, path: str, source_table: str) -> str:
    """The sha256 of the landed bytes at `path`; for a partner file also the one its manifest records,
    which must be the same and name the same place."""
    digest = hashlib.sha256(bytes(obstore.get(lake.store, path).bytes())).hexdigest()
    if source_table != "bronze.orders":  # the Airbyte destination writes no manifest
        manifest = Manifest.from_json(bytes(obstore.get(lake.store, path + MANIFEST_SUFFIX).bytes()))
        assert (manifest.landed_path, manifest.sha256) == (path, digest)
    return digest
