"""Bronze payment events rebuilt from a real inbox (SQLite in tmp): typed, deduplicated, quarantined, idempotent."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandera.errors
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from dagster_project.lib.bronze.contract import bronze_schema, pandera_schema
from dagster_project.lib.bronze.engine import LoadResult, load_partition
from dagster_project.lib.bronze.readers.webhook_events import WebhookEventsReader
from dagster_project.lib.intake.inbox import InboundEvent, Inbox, StoredEvent, migrate, sha256_hex
from dagster_project.lib.lake import Lake as LakeRoot
from dagster_project.lib.quality.gates import bronze_gate
from dagster_project.lib.quality.gx_runner import validate_lake
from dagster_project.lib.sources.registry import PAYMENT_EVENTS, SHOP_EVENTS
from dagster_project.lib.sources.spec import SourceSpec

DAY = "2025-11-05"
NOON = dt.datetime(2025, 11, 5, 12, tzinfo=dt.UTC)


def body(event_id: str, event_type: str = "charge.succeeded", obj: Any = "default", **extra: Any) -> bytes:
    if obj == "default":
        obj = {
            "id": "ch_1",
            "object": "charge",
            "amount": 2500,
            "amount_refunded": 0,
            "currency": "eur",
            "status": "succeeded",
            "balance_transaction": {"id": "txn_1", "object": "balance_transaction", "fee": 60},
        }
    payload = {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "created": int(NOON.timestamp()),
        "livemode": False,
        "data": {"object": obj},
    } | extra
    if obj is None:
        del payload["data"]
    return json.dumps(payload).encode()


def inbound(event_id: str, raw: bytes, event_type: str = "charge.succeeded", created: dt.datetime = NOON):
    return InboundEvent(
        provider="stripe",
        event_id=event_id,
        event_type=event_type,
        event_created_at=created,
        body=raw,
        headers={"content-type": "application/json"},
    )


@pytest.fixture
def inbox(tmp_path: Path) -> Iterator[Inbox]:
    url = f"sqlite:///{tmp_path / 'inbox.sqlite'}"
    migrate(url)
    with Inbox(url) as inbox:
        yield inbox


class Lake:
    def __init__(self, root: Path, spec: SourceSpec = PAYMENT_EVENTS):
        self.spec, self.root = spec, LakeRoot.parse(str(root))
        self.bronze, self.quarantine = self.root.table("bronze", spec.name), self.root.table("quarantine", spec.name)

    def load(self, batches: Any, day: str = DAY) -> LoadResult:
        reader = WebhookEventsReader(self.spec, batches, day)
        return load_partition(self.spec, reader, lake=self.root, run_id="r")

    def rebuild(self, inbox: Inbox, day: str = DAY, batch_events: int = 5000) -> LoadResult:
        provider = self.spec.webhook.provider
        return self.load(inbox.iter_for_dates(provider, [dt.date.fromisoformat(day)], batch_size=batch_events), day)

    def rows(self) -> list[dict]:
        return sorted(DeltaTable(str(self.bronze)).to_pyarrow_table().to_pylist(), key=lambda r: r["_source_row"])

    def rejected(self) -> list[dict]:
        return DeltaTable(str(self.quarantine)).to_pyarrow_table().to_pylist()


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(tmp_path / "lake")


def test_events_become_typed_rows_with_lineage(inbox: Inbox, lake: Lake):
    raw = body("evt_1")
    inbox.store(inbound("evt_1", raw))
    payout = body(
        "evt_2", "payout.paid", {"id": "po_1", "object": "payout", "amount": 2440, "currency": "usd", "status": "paid"}
    )
    inbox.store(inbound("evt_2", payout, "payout.paid"))
    dispute = body(
        "evt_3",
        "charge.dispute.created",
        {"id": "dp_1", "object": "dispute", "charge": "ch_1", "amount": 2500, "currency": "eur"},
    )
    inbox.store(inbound("evt_3", dispute, "charge.dispute.created"))

    load = lake.rebuild(inbox)

    assert (load.received, load.loaded, load.quarantined) == (3, 3, 0)
    charge, paid, disputed = lake.rows()
    assert pa.schema(DeltaTable(str(lake.bronze)).schema().to_arrow()) == bronze_schema(PAYMENT_EVENTS)
    assert {
        k: charge[k]
        for k in (
            "event_id",
            "event_type",
            "object_type",
            "charge_id",
            "payout_id",
            "amount_minor",
            "amount_refunded_minor",
            "fee_minor",
            "currency",
            "status",
            "is_known_type",
            "livemode",
        )
    } == {
        "event_id": "evt_1",
        "event_type": "charge.succeeded",
        "object_type": "charge",
        "charge_id": "ch_1",
        "payout_id": None,
        "amount_minor": 2500,
        "amount_refunded_minor": 0,
        "fee_minor": 60,
        "currency": "EUR",
        "status": "succeeded",
        "is_known_type": True,
        "livemode": False,
    }
    assert charge["event_created_at"] == NOON
    assert charge["business_date"] == dt.date(2025, 11, 5)
    assert charge["body"] == raw.decode()  # silver can re-derive anything from it
    stored = inbox.read_since(0)[0]
    assert charge["_source"] == "webhook:stripe"
    assert charge["_source_file"] == f"inbox:stripe:{stored.id}" and charge["_source_row"] == stored.id
    assert charge["_checksum_sha256"] == sha256_hex(raw)
    assert charge["_received_at"] == stored.received_at
    assert charge["_schema_version"] == PAYMENT_EVENTS.schema_version and charge["_run_id"] == "r"
    assert (paid["payout_id"], paid["charge_id"], paid["currency"], paid["amount_minor"]) == ("po_1", None, "USD", 2440)
    assert (disputed["object_type"], disputed["charge_id"]) == ("dispute", "ch_1")


def test_unknown_event_types_are_kept_and_flagged(inbox: Inbox, lake: Lake):
    inbox.store(inbound("evt_1", body("evt_1")))
    odd = body("evt_2", "customer.tax_id.created", {"id": "txi_1", "object": "tax_id"})
    inbox.store(inbound("evt_2", odd, "customer.tax_id.created"))

    load = lake.rebuild(inbox)

    assert (load.loaded, load.quarantined, load.details["unknown_event_types"]) == (2, 0, 1)
    flags = {r["event_id"]: r["is_known_type"] for r in lake.rows()}
    assert flags == {"evt_1": True, "evt_2": False}


def test_events_breaking_the_contract_are_quarantined_with_every_reason(inbox: Inbox, lake: Lake):
    good = body("evt_ok")
    no_object = body("evt_no_object", obj=None)
    negative = body("evt_negative", obj={"id": "ch_2", "object": "charge", "amount": -5, "currency": "eur"})
    several = body(
        "evt_several",
        obj={"id": "ch_3", "object": "charge", "amount": "12.50", "currency": "euro", "amount_refunded": 1.5},
    )
    missing = body("evt_missing", "payout.paid", {"id": "po_1", "object": "payout", "status": "paid"})
    for event_id, raw, event_type in [
        ("evt_ok", good, "charge.succeeded"),
        ("evt_no_object", no_object, "charge.succeeded"),
        ("evt_negative", negative, "charge.succeeded"),
        ("evt_several", several, "charge.succeeded"),
        ("evt_missing", missing, "payout.paid"),
    ]:
        inbox.store(inbound(event_id, raw, event_type))

    load = lake.rebuild(inbox)

    assert (load.received, load.loaded, load.quarantined) == (5, 1, 4)
    assert [r["event_id"] for r in lake.rows()] == ["evt_ok"]
    rejected = {json.loads(r["_raw_record"])["id"]: r for r in lake.rejected()}
    assert {k: sorted(r["_reasons"]) for k, r in rejected.items()} == {
        "evt_no_object": ["data.object: required object missing"],
        "evt_negative": ["data.object.amount: below the minimum 0"],
        "evt_several": [
            "data.object.amount: not an integer amount in minor units",
            "data.object.amount_refunded: not an integer amount in minor units",
            "data.object.currency: not a three-letter ISO 4217 code",
        ],
        "evt_missing": ["data.object.amount: required value missing", "data.object.currency: required value missing"],
    }
    assert rejected["evt_several"]["_raw_record"] == several.decode()
    assert rejected["evt_several"]["_source_file"].startswith("inbox:stripe:")
    assert rejected["evt_several"]["_checksum_sha256"] == sha256_hex(several)
    assert sum(load.reasons.values()) == 7
    # Reasons name the field and the rule, never the value.
    assert not any("euro" in reason or "12.50" in reason for reason in load.reasons)


def test_rebuilding_a_partition_is_idempotent(inbox: Inbox, lake: Lake):
    inbox.store(inbound("evt_1", body("evt_1")))
    inbox.store(inbound("evt_bad", body("evt_bad", obj=None)))
    other_day = NOON + dt.timedelta(days=1)
    inbox.store(inbound("evt_next_day", body("evt_next_day"), created=other_day))
    lake.rebuild(inbox)
    lake.rebuild(inbox, "2025-11-06")
    volatile = {"_ingested_at", "_run_id"}

    def stable(rows: list[dict]) -> list[tuple]:
        return sorted(tuple((k, v) for k, v in sorted(r.items()) if k not in volatile) for r in rows)

    before, before_rejected = stable(lake.rows()), stable(lake.rejected())
    for _ in range(2):
        load = lake.rebuild(inbox)

    assert (load.loaded, load.quarantined) == (1, 1)
    assert stable(lake.rows()) == before and len(before) == 2
    assert stable(lake.rejected()) == before_rejected and len(before_rejected) == 1


def test_a_resent_event_is_one_row(inbox: Inbox, lake: Lake):
    raw = body("evt_1")
    assert [inbox.store(inbound("evt_1", raw)) for _ in range(3)] == ["stored", "duplicate", "duplicate"]

    load = lake.rebuild(inbox)

    assert (load.received, load.loaded, load.duplicates) == (1, 1, 0)
    assert [r["event_id"] for r in lake.rows()] == ["evt_1"]


def _stored(event_id: str, inbox_id: int, raw: bytes) -> StoredEvent:
    return StoredEvent(
        id=inbox_id,
        provider="stripe",
        event_id=event_id,
        event_type="charge.succeeded",
        event_created_at=NOON,
        event_date=NOON.date(),
        body=raw,
        body_sha256=sha256_hex(raw),
        headers={},
        received_at=NOON,
    )


def test_a_repeated_event_id_is_deduplicated_even_across_batches(lake: Lake):
    first, again = _stored("evt_1", 1, body("evt_1")), _stored("evt_1", 7, body("evt_1", livemode=True))
    batches = [[first, _stored("evt_2", 2, body("evt_2"))], [again]]

    load = lake.load(batches)

    assert (load.received, load.loaded, load.duplicates, load.details["inbox_max_id"]) == (3, 2, 1, 7)
    rows = {r["event_id"]: r for r in lake.rows()}
    assert rows["evt_1"]["_source_row"] == 1 and rows["evt_1"]["livemode"] is False  # the first one stored wins


def test_batches_stream_and_events_of_another_date_are_refused(inbox: Inbox, lake: Lake):
    for i in range(7):
        inbox.store(inbound(f"evt_{i}", body(f"evt_{i}")))
    load = lake.rebuild(inbox, batch_events=2)
    assert load.loaded == 7 and len(lake.rows()) == 7

    wrong = [[_stored("evt_x", 99, body("evt_x"))]]
    with pytest.raises(ValueError, match="inbox:stripe:99: belongs to 2025-11-05, not 2025-11-06"):
        lake.load(wrong, "2025-11-06")
    assert len(lake.rows()) == 7  # nothing was committed


def test_an_empty_partition_leaves_the_other_dates_alone(inbox: Inbox, lake: Lake):
    inbox.store(inbound("evt_1", body("evt_1")))
    lake.rebuild(inbox)

    load = lake.rebuild(inbox, "2025-11-04")

    assert (load.received, load.loaded) == (0, 0)
    assert [r["event_id"] for r in lake.rows()] == ["evt_1"]


def test_the_batch_contract_refuses_a_repeated_event_id():
    row = {f.name: None for f in bronze_schema(PAYMENT_EVENTS)}
    row |= {
        "event_id": "evt_1",
        "event_type": "x",
        "event_created_at": NOON,
        "object_type": "charge",
        "is_known_type": False,
        "body": "{}",
        "business_date": NOON.date(),
        "_source": "webhook:stripe",
        "_source_file": "inbox:stripe:1",
        "_source_row": 1,
        "_checksum_sha256": "0" * 64,
        "_schema_version": 1,
        "_received_at": NOON,
        "_ingested_at": NOON,
        "_run_id": "r",
    }

    frame = pl.from_arrow(pa.Table.from_pylist([row, row], schema=bronze_schema(PAYMENT_EVENTS)))
    with pytest.raises(pandera.errors.SchemaError, match="event_id"):
        pandera_schema(PAYMENT_EVENTS).validate(frame)


def test_bronze_gate_derived_from_the_declaration_passes_a_rebuilt_partition(inbox: Inbox, lake: Lake):
    inbox.store(inbound("evt_1", body("evt_1")))
    inbox.store(
        inbound("evt_2", body("evt_2", "customer.created", {"id": "cus_1", "object": "customer"}), "customer.created")
    )
    inbox.store(inbound("evt_bad", body("evt_bad", obj=None)))
    load = lake.rebuild(inbox)

    def validate(expected_rows: int):
        gate = bronze_gate(PAYMENT_EVENTS, expected_rows)
        return validate_lake(
            lake.root,
            f"bronze.{PAYMENT_EVENTS.name}",
            gate.name,
            gate.expectations,
            predicate_sql="business_date = ?::DATE",
            params=[DAY],
            sample_columns=list(gate.sample_columns),
        )

    result = validate(load.received - load.quarantined - load.duplicates)
    assert result.success, result.summary()
    assert not validate(3).success


# --- Standard Webhooks (the shop's events) --------------------------------------------------------------


def standard_inbound(event_id: str, raw: bytes, event_type: str = "order.shipped") -> InboundEvent:
    return InboundEvent(provider="shop", event_id=event_id, event_type=event_type, event_created_at=NOON, body=raw)


def test_standard_webhooks_events_load_with_their_subject(inbox: Inbox, tmp_path: Path):
    lake = Lake(tmp_path / "lake", SHOP_EVENTS)
    good = json.dumps({"type": "order.shipped", "timestamp": NOON.isoformat(), "data": {"id": "ord_7"}}).encode()
    inbox.store(standard_inbound("msg_1", good))
    inbox.store(standard_inbound("msg_2", b'{"type": "order.shipped", "data": "ord_8"}'))
    inbox.store(standard_inbound("msg_3", b'{"type": "order.shipped", "data": {"id": 42}}'))
    inbox.store(inbound("evt_1", body("evt_1")))  # another provider's event is not read

    load = lake.rebuild(inbox)

    assert (load.received, load.loaded, load.quarantined) == (3, 1, 2)
    [row] = lake.rows()
    assert (row["event_id"], row["event_type"], row["subject_id"], row["_source"]) == (
        "msg_1",
        "order.shipped",
        "ord_7",
        "webhook:shop",
    )
    reasons = sorted(tuple(r["_reasons"]) for r in lake.rejected())
    assert reasons == [("data.id: not a non-empty string",), ("data: required object missing",)]
