"""Erasure on the lake: what landed is rewritten, bronze is loaded again without the subject, no earlier
version keeps a raw value, and a file delivered later never brings the subject back. Local and S3."""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
from pathlib import Path

import obstore
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from dagster_project import settings
from dagster_project.lib import erase
from dagster_project.lib.bronze.engine import load_partition
from dagster_project.lib.checksums import crc32_hex
from dagster_project.lib.erasure import (
    ForgetList,
    Subject,
    load_forget_list,
    record_requests,
    redact_json_lines,
    subject_hash,
)
from dagster_project.lib.intake.landing import all_landed_files, land_file
from dagster_project.lib.lake import Lake
from dagster_project.lib.masking import pii_token
from dagster_project.lib.sources.naming import parse_file_name
from dagster_project.lib.sources.registry import CUSTOMERS, ORDERS
from dagster_project.samples.orders import land_sample_orders
from dagster_project.samples.partner_files import write_customer_files
from tests.lakes import LOCAL_AND_S3
from tests.lib.customer_files import RECEIVED_AT, customer, customers_csv

KEY = b"test-only-hmac-key-0123456789abcdef"
DAYS = [dt.date(2025, 11, 5), dt.date(2025, 11, 6)]


@pytest.fixture(params=LOCAL_AND_S3)
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    if request.param == "s3":
        return Lake.parse(request.getfixturevalue("s3_lake"), settings.lake_storage_options())
    return Lake.parse(str(tmp_path / "lake"))


def _land(lake: Lake, path: Path, staging: Path) -> None:
    staged = staging / path.name
    staging.mkdir(exist_ok=True)
    shutil.copyfile(path, staged)
    land_file(lake, parse_file_name(path.name), staged, source="sftp", source_uri="u", received_at=RECEIVED_AT)


def _load(lake: Lake, spec, day: str, forget: ForgetList | None = None):
    return load_partition(
        spec,
        lambda: erase.open_reader(spec, lake, day),
        lake=lake,
        run_id="load",
        business_date=day,
        forget=forget,
    )


def _rows(lake: Lake, layer: str, name: str) -> list[dict]:
    return DeltaTable(lake.table(layer, name), storage_options=lake.delta_options()).to_pyarrow_table().to_pylist()


def _objects(lake: Lake) -> dict[str, bytes]:
    return {
        meta["path"]: bytes(obstore.get(lake.store, meta["path"]).bytes())
        for batch in obstore.list(lake.store)
        for meta in batch
    }


def _hits(path: str, data: bytes, needles: list[str], customer_id: int) -> list[str]:
    """Where a needle (or the customer id in a customer_id column) occurs in an object, Parquet decoded."""
    found = [f"{path}: raw bytes hold {n!r}" for n in needles if n.encode() in data.lower()]
    if path.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data))
        for name in table.column_names:
            column = table.column(name)
            text = json.dumps(column.to_pylist(), default=str).lower()
            found += [f"{path}: column {name} holds {n!r}" for n in needles if n in text]
            if name == "customer_id" and pa.types.is_integer(column.type) and customer_id in column.to_pylist():
                found.append(f"{path}: customer_id {customer_id}")
    return found


def test_an_erased_customer_leaves_no_byte_in_the_lake_and_does_not_come_back(lake: Lake, tmp_path: Path) -> None:
    generated = write_customer_files(tmp_path / "generated", DAYS, customers=40, changes_per_day=15, seed=3)
    for g in generated:
        _land(lake, g.path, tmp_path / "staging")
    land_sample_orders(lake, DAYS, customers=40, seed=3)
    dates = sorted({g.business_date for g in generated})
    for day in dates:
        _load(lake, CUSTOMERS, day)
        _load(lake, ORDERS, day)
    customers = _rows(lake, "bronze", "customers")
    victim = customers[0]
    victim_id, email = victim["customer_id"], victim["email"].strip().lower()
    others = {r["customer_id"] for r in customers} - {victim_id}
    orders_before = _rows(lake, "bronze", "orders")
    victim_orders = sum(r["customer_id"] == victim_id for r in orders_before)

    forget = record_requests(
        lake,
        KEY,
        [Subject("customer_id", str(victim_id)), Subject("email", email.upper())],
        request_id="req-1",
        requested_at=dt.datetime(2025, 11, 7, tzinfo=dt.UTC),
    )
    receipt = erase.Receipt("req-1", subjects=2, forget_list=len(forget.hashes))
    affected = erase.erase_inputs(lake, forget, receipt, inbox=None)
    erase.reload_bronze(lake, forget, affected, receipt, run_id="erase", inbox=None)

    assert receipt.records_erased["customers"] >= 1
    assert set(receipt.partitions_reloaded["customers"]) <= set(dates)
    after = _rows(lake, "bronze", "customers")
    assert victim_id not in {r["customer_id"] for r in after}
    assert {r["customer_id"] for r in after} == others  # everyone else is still there
    orders_after = _rows(lake, "bronze", "orders")
    assert len(orders_after) == len(orders_before)  # the orders stay, as guest orders
    assert not any(r["customer_id"] == victim_id for r in orders_after)
    assert sum(r["customer_id"] is None for r in orders_after) >= victim_orders
    rewritten = [m for m in all_landed_files(lake, "customers") if m.redactions]
    assert rewritten and all(m.redactions[0]["request_id"] == "req-1" for m in rewritten)

    # Every object of the lake, Parquet decoded and Delta logs included: neither the address nor its token,
    # nor the id in a customer_id column. The forget list holds a keyed hash of neither form.
    needles = [email, pii_token(email, KEY)]
    hits = [hit for path, data in _objects(lake).items() for hit in _hits(path, data, needles, victim_id)]
    assert hits == []
    assert subject_hash("email", email, KEY) in load_forget_list(lake, KEY).hashes

    # A later delivery naming the subject, and a replay of every partition: the subject stays out.
    late = tmp_path / "late"
    late.mkdir()
    text = customers_csv([customer(victim_id, email=email), customer(9999)])
    name = CUSTOMERS.files.file_name(dates[-1], 99, crc32_hex(text.encode()))
    (late / name).write_text(text)
    _land(lake, late / name, tmp_path / "staging-late")
    result = _load(lake, CUSTOMERS, dates[-1], forget=load_forget_list(lake, KEY))
    assert result.forgotten == 1 and result.received == result.loaded + result.quarantined + result.duplicates + 1
    replayed = _rows(lake, "bronze", "customers")
    assert victim_id not in {r["customer_id"] for r in replayed}
    assert 9999 in {r["customer_id"] for r in replayed}


def test_erasure_refuses_identifiers_it_cannot_use_without_quoting_them() -> None:
    with pytest.raises(ValueError, match="look like") as raised:
        Subject("email", "not-an-address")
    assert "not-an-address" not in str(raised.value)
    with pytest.raises(ValueError, match="whole number"):
        Subject("customer_id", "12a")
    assert "x@example.com" not in repr(Subject("email", "X@example.com "))


def test_a_partition_whose_landing_expired_is_erased_from_its_stored_rows(lake: Lake, tmp_path: Path) -> None:
    """Retention removed the landed files of the first day: erasure rewrites that bronze partition (and its
    quarantine) from what they hold, through the engine, and verification finds nothing left."""
    from dagster_project.lib import retention
    from dagster_project.lib.bronze.engine import partition_state

    generated = write_customer_files(tmp_path / "generated", DAYS, customers=30, changes_per_day=10, seed=4)
    for g in generated:
        _land(lake, g.path, tmp_path / "staging")
    dates = sorted({g.business_date for g in generated})
    for day in dates:
        _load(lake, CUSTOMERS, day)
    first_day = [r for r in _rows(lake, "bronze", "customers") if r["business_date"].isoformat() == dates[0]]
    victim = first_day[0]["customer_id"]
    quarantined_before = len(_rows(lake, "quarantine", "customers"))
    retention.expire_landing(lake, 1, now=dt.datetime(2025, 11, 7, 12, tzinfo=dt.UTC))
    assert erase.expired_dates(lake, "customers") == {dates[0]}

    forget = record_requests(
        lake, KEY, [Subject("customer_id", victim)], request_id="req-2", requested_at=dt.datetime.now(dt.UTC)
    )
    assert erase.remaining(lake, forget) == {
        "customers": sum(r["customer_id"] == victim for r in _rows(lake, "bronze", "customers"))
    }
    receipt = erase.Receipt("req-2")
    affected = erase.erase_inputs(lake, forget, receipt, inbox=None)
    assert dates[0] in affected["customers"]
    erase.reload_bronze(lake, forget, affected, receipt, run_id="erase", inbox=None)

    assert erase.remaining(lake, forget) == {}
    after = _rows(lake, "bronze", "customers")
    assert victim not in {r["customer_id"] for r in after}
    assert {r["customer_id"] for r in after if r["business_date"].isoformat() == dates[0]} == {
        r["customer_id"] for r in first_day
    } - {victim}
    assert len(_rows(lake, "quarantine", "customers")) == quarantined_before  # the first day's kept as it was
    assert partition_state(CUSTOMERS, lake, dt.date.fromisoformat(dates[0])).consistent


def test_records_are_matched_column_wise_as_they_are_one_by_one() -> None:
    """The engine's column-wise match agrees with the per-record rule on typed ids, text ids, case, spaces,
    nulls and raw records the contract refused."""
    forget = ForgetList(
        KEY, frozenset({subject_hash("customer_id", 7, KEY), subject_hash("email", "gone@example.com", KEY)})
    )
    batch = pa.RecordBatch.from_pydict(
        {
            "customer_id": pa.array([7, 8, None, 9, 10], pa.int64()),
            "email": [None, " Gone@Example.COM ", "gone@example.com", "kept@example.com", None],
            "_raw_record": [None, None, None, None, "7,broken-address,Ada"],
        }
    )
    one_by_one = [forget._names_subject(CUSTOMERS, row) for row in batch.to_pylist()]
    assert forget._named(CUSTOMERS, batch) == one_by_one == [True, True, True, False, True]
    kept, count = forget.apply(CUSTOMERS, batch)
    assert count == 4 and kept.column("customer_id").to_pylist() == [9]
    as_text = batch.set_column(0, "customer_id", pa.array(["007", "8", None, "x", "10"]))
    assert forget._named(CUSTOMERS, as_text) == [True, True, True, False, True]


def test_airbyte_records_are_redacted_in_each_shape_and_lines_that_are_no_record_lose_only_addresses() -> None:
    forget = ForgetList(KEY, frozenset({subject_hash("customer_id", 7, KEY), subject_hash("email", "gone@x.org", KEY)}))
    lines = [
        {"_airbyte_raw_id": "a", "_airbyte_data": {"customer_id": 7, "order_id": 1}},
        {"_airbyte_raw_id": "b", "_airbyte_data": json.dumps({"customer_id": 7, "order_id": 2})},
        {"_airbyte_raw_id": "c", "customer_id": 7, "order_id": 3},
        {"_airbyte_raw_id": "d", "_airbyte_data": "{not json"},
        {"_airbyte_raw_id": "e", "_airbyte_data": {"customer_id": 8, "order_id": 5}},
    ]
    broken = b'{"_airbyte_raw_id": "f", "note": "mail gone@x.org or kept@x.org", \xff\n'
    src = "".join(json.dumps(line) + "\n" for line in lines).encode() + b"[1, 2]\n" + broken
    dst = io.BytesIO()

    named = redact_json_lines(ORDERS, io.BytesIO(src), dst, forget)

    assert named == 4
    written = dst.getvalue().splitlines()
    # A line that is no record keeps its bytes, the forgotten address aside.
    assert written[-1] == b'{"_airbyte_raw_id": "f", "note": "mail [erased] or kept@x.org", \xff'
    written = written[:-1]
    records = [json.loads(line) for line in written[:-1]]
    data = [r["_airbyte_data"] for r in records[:2]] + [records[2]]
    data[1] = json.loads(data[1])  # JSON text stays JSON text
    assert [(d["customer_id"], d["order_id"]) for d in data] == [(None, 1), (None, 2), (None, 3)]  # redacted
    assert written[3:] == [json.dumps(lines[3]).encode(), json.dumps(lines[4]).encode(), b"[1, 2]"]  # as they were
