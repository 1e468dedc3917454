"""The bronze hop for PSP webhooks: inbox events of one day -> typed Delta partition + quarantine partition.

A partition holds the events whose `created` time falls on its date (UTC), the business date the inbox
already indexes them by. It is rebuilt from every inbox event of that date and replaced in one Delta commit
(`predicate` overwrite), so a re-run yields the same rows and never duplicates. Events stream through in
inbox-sized batches; events that break the edge contract are spooled to a temporary Arrow file until their
own commit, so memory stays flat apart from the set of event ids seen (the defensive de-duplication).

The edge contract of an event (every rule it breaks is recorded, named by field, never by value):
- the body is a JSON object whose `data.object` is a JSON object with an `object` type;
- amounts (`amount`, `amount_refunded`, `balance_transaction.fee`) are non-negative integers (minor units);
- `currency` is a three-letter ISO 4217 code (Stripe sends it lower case; bronze stores it upper case);
- a known charge, dispute or payout event names its charge or payout and carries an amount and a currency.
Event types this module does not know are kept and flagged (`is_known_type = false`), not dropped: the
PSP adds types over time and silver decides what to do with them.
Received = loaded + quarantined for every partition; a repeated event id is counted as a duplicate.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandera.polars as pa_pl
import polars as pl
import pyarrow as pa

from dagster_project.lib.bronze.contract import LINEAGE_FIELDS, PARTITION_COLUMN
from dagster_project.lib.bronze.engine import replace_partition
from dagster_project.lib.intake.inbox import Inbox, StoredEvent

TABLE = "payment_events"
PROVIDER = "stripe"
SOURCE = "webhook"
SCHEMA_VERSION = 1
DEFAULT_BATCH_EVENTS = 5000

CHARGE_EVENT_TYPES = frozenset(
    {
        "charge.pending",
        "charge.succeeded",
        "charge.captured",
        "charge.failed",
        "charge.expired",
        "charge.refunded",
    }
)
DISPUTE_EVENT_TYPES = frozenset({"charge.dispute.created", "charge.dispute.closed"})
PAYOUT_EVENT_TYPES = frozenset({"payout.created", "payout.paid", "payout.failed", "payout.canceled"})
KNOWN_EVENT_TYPES = CHARGE_EVENT_TYPES | DISPUTE_EVENT_TYPES | PAYOUT_EVENT_TYPES

_CURRENCY = re.compile(r"[A-Za-z]{3}", re.ASCII)
_MAX_INT64 = 2**63 - 1

_DATA_FIELDS: tuple[pa.Field, ...] = (
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("event_type", pa.string(), nullable=False),
    pa.field("event_created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("livemode", pa.bool_()),
    pa.field("object_type", pa.string(), nullable=False),
    pa.field("charge_id", pa.string()),
    pa.field("payout_id", pa.string()),
    pa.field("amount_minor", pa.int64()),
    pa.field("amount_refunded_minor", pa.int64()),
    pa.field("fee_minor", pa.int64()),
    pa.field("currency", pa.string()),
    pa.field("status", pa.string()),
    pa.field("is_known_type", pa.bool_(), nullable=False),
    pa.field("body", pa.string(), nullable=False),
)
BRONZE_SCHEMA = pa.schema([*_DATA_FIELDS, pa.field(PARTITION_COLUMN, pa.date32(), nullable=False), *LINEAGE_FIELDS])
COLUMNS: tuple[str, ...] = tuple(BRONZE_SCHEMA.names)
KEY: tuple[str, ...] = ("event_id",)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field(PARTITION_COLUMN, pa.date32(), nullable=False),
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("_source", pa.string(), nullable=False),
        pa.field("_source_file", pa.string(), nullable=False),
        pa.field("_source_row", pa.int64(), nullable=False),
        pa.field("_raw_record", pa.string(), nullable=False),
        pa.field("_reasons", pa.list_(pa.string()), nullable=False),
        pa.field("_checksum_sha256", pa.string(), nullable=False),
        pa.field("_schema_version", pa.int32(), nullable=False),
        pa.field("_received_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("_ingested_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("_run_id", pa.string(), nullable=False),
    ]
)

_POLARS_TYPES = {
    pa.string(): pl.String,
    pa.int64(): pl.Int64,
    pa.int32(): pl.Int32,
    pa.bool_(): pl.Boolean,
    pa.date32(): pl.Date,
    pa.timestamp("us", tz="UTC"): pl.Datetime("us", "UTC"),
}


def pandera_schema() -> pa_pl.DataFrameSchema:
    """The typed contract of a bronze batch: exactly these columns, in order, with these types and
    nullability, and each event id once. Value rules were applied per event before the batch was built."""
    columns = {
        f.name: pa_pl.Column(_POLARS_TYPES[f.type], nullable=f.nullable, unique=f.name in KEY) for f in BRONZE_SCHEMA
    }
    return pa_pl.DataFrameSchema(columns, strict=True, ordered=True, name=f"bronze.{TABLE}")


def source_reference(event: StoredEvent) -> str:
    """The lineage reference of an inbox event (`_source_file`): where to find its raw body again."""
    return f"inbox:{event.provider}:{event.id}"


# --- the edge contract of one event ---------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedEvent:
    """The typed fields of one event, or every contract rule it breaks (`reasons`, empty when good)."""

    fields: dict[str, Any]
    reasons: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.reasons


def _text(obj: dict[str, Any], name: str, label: str, reasons: list[str]) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, dict) and isinstance(value.get("id"), str):  # an expanded object: keep its id
        value = value["id"]
    if not isinstance(value, str) or not value:
        reasons.append(f"{label}: not a non-empty string")
        return None
    return value


def _minor_units(value: Any, label: str, reasons: list[str]) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        reasons.append(f"{label}: not an integer amount in minor units")
        return None
    if value < 0:
        reasons.append(f"{label}: below the minimum 0")
        return None
    if value > _MAX_INT64:
        reasons.append(f"{label}: above the maximum of a 64-bit integer")
        return None
    return value


def parse_event(event: StoredEvent) -> ParsedEvent:
    """Type one stored event and check it against the edge contract."""
    reasons: list[str] = []
    fields: dict[str, Any] = {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "event_created_at": event.event_created_at,
        "is_known_type": event.event_type in KNOWN_EVENT_TYPES,
    }
    try:
        payload = json.loads(event.body)
    except (ValueError, RecursionError):
        payload = None
    if not isinstance(payload, dict):
        return ParsedEvent(fields, ("body: not a JSON object",))
    livemode = payload.get("livemode")
    if livemode is not None and not isinstance(livemode, bool):
        reasons.append("livemode: not a boolean")
        livemode = None
    fields["livemode"] = livemode
    data = payload.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        return ParsedEvent(fields, (*reasons, "data.object: required object missing"))

    if obj.get("object") is None:
        reasons.append("data.object.object: required value missing")
    object_type = _text(obj, "object", "data.object.object", reasons)
    object_id = _text(obj, "id", "data.object.id", reasons)
    charge_id = object_id if object_type == "charge" else _text(obj, "charge", "data.object.charge", reasons)
    payout_id = object_id if object_type == "payout" else _text(obj, "payout", "data.object.payout", reasons)
    balance = obj.get("balance_transaction")  # an id, or the expanded transaction that carries the fee
    fee = None
    if isinstance(balance, dict):
        fee = _minor_units(balance.get("fee"), "data.object.balance_transaction.fee", reasons)
    currency = obj.get("currency")
    if currency is not None:
        if isinstance(currency, str) and _CURRENCY.fullmatch(currency):
            currency = currency.upper()
        else:
            reasons.append("data.object.currency: not a three-letter ISO 4217 code")
            currency = None
    status = obj.get("status")
    if status is not None and not isinstance(status, str):
        reasons.append("data.object.status: not a string")
        status = None
    fields.update(
        object_type=object_type,
        charge_id=charge_id,
        payout_id=payout_id,
        amount_minor=_minor_units(obj.get("amount"), "data.object.amount", reasons),
        amount_refunded_minor=_minor_units(obj.get("amount_refunded"), "data.object.amount_refunded", reasons),
        fee_minor=fee,
        currency=currency,
        status=status,
    )
    reasons += _required_for_type(event.event_type, fields, obj)
    return ParsedEvent(fields, tuple(reasons))


def _required_for_type(event_type: str, fields: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """What a known event type must carry; a rule already broken by a malformed value is not repeated."""
    if event_type in CHARGE_EVENT_TYPES:
        expected_object, required = "charge", ("charge_id", "amount_minor", "currency")
    elif event_type in DISPUTE_EVENT_TYPES:
        expected_object, required = "dispute", ("charge_id", "amount_minor", "currency")
    elif event_type in PAYOUT_EVENT_TYPES:
        expected_object, required = "payout", ("payout_id", "amount_minor", "currency")
    else:
        return []
    reasons = []
    if fields["object_type"] is not None and fields["object_type"] != expected_object:
        reasons.append(f"data.object.object: {event_type} must carry a {expected_object}")
    source_names = {"charge_id": "id" if expected_object == "charge" else "charge", "payout_id": "id"}
    source_names |= {"amount_minor": "amount", "currency": "currency"}
    for name in required:
        if fields[name] is None and obj.get(source_names[name]) is None:
            reasons.append(f"data.object.{source_names[name]}: required value missing")
    return reasons


# --- one partition --------------------------------------------------------------------------------------


@dataclass
class PartitionLoad:
    business_date: str
    loaded: int = 0
    quarantined: int = 0
    duplicates: int = 0  # an event id seen again within the partition; the first (lowest inbox id) is kept
    unknown_types: int = 0
    max_inbox_id: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    event_types: Counter[str] = field(default_factory=Counter)

    @property
    def received(self) -> int:
        """Distinct events of the partition in the inbox."""
        return self.loaded + self.quarantined


def _lineage(event: StoredEvent, ingested_at: dt.datetime, run_id: str) -> dict[str, Any]:
    return {
        "_source": SOURCE,
        "_source_file": source_reference(event),
        "_source_row": event.id,
        "_checksum_sha256": event.body_sha256,
        "_schema_version": SCHEMA_VERSION,
        "_received_at": event.received_at,
        "_ingested_at": ingested_at,
        "_run_id": run_id,
    }


def _body_text(event: StoredEvent) -> str:
    return event.body.decode("utf-8", errors="replace")  # the receiver only stores UTF-8; never fail on it


def load_partition(
    batches: Iterable[Sequence[StoredEvent]],
    *,
    business_date: str,
    bronze_path: Path,
    quarantine_path: Path,
    run_id: str,
    ingested_at: dt.datetime | None = None,
) -> PartitionLoad:
    """Replace one bronze partition (and its quarantine partition) with the events of `batches`.

    `batches` are the partition's inbox events in inbox id order (`Inbox.iter_for_dates`); every event must
    belong to `business_date`.
    """
    day = dt.date.fromisoformat(business_date)
    ingested_at = ingested_at or dt.datetime.now(dt.UTC)
    result = PartitionLoad(business_date=day.isoformat())
    contract = pandera_schema()
    seen: set[str] = set()

    with tempfile.TemporaryDirectory(prefix="medallion-quarantine-") as tmp:
        spool_path = Path(tmp) / "quarantine.arrows"
        with pa.OSFile(str(spool_path), "wb") as sink, pa.ipc.new_stream(sink, QUARANTINE_SCHEMA) as spool:

            def good_batches() -> Iterator[pa.RecordBatch]:
                for events in batches:
                    good, bad = _split(events, day, seen, result, ingested_at, run_id)
                    if bad:
                        spool.write_batch(pa.RecordBatch.from_pylist(bad, schema=QUARANTINE_SCHEMA))
                    if good:
                        batch = pa.RecordBatch.from_pylist(good, schema=BRONZE_SCHEMA)
                        contract.validate(pl.from_arrow(batch))
                        yield batch

            replace_partition(
                bronze_path,
                BRONZE_SCHEMA,
                good_batches(),
                day,
                description="PSP webhook events, one row per event id, partitioned by UTC event date.",
            )
        with pa.OSFile(str(spool_path), "rb") as source:
            replace_partition(
                quarantine_path,
                QUARANTINE_SCHEMA,
                pa.ipc.open_stream(source),
                day,
                description="PSP webhook events that broke the edge contract, with every reason.",
            )
    return result


def _split(
    events: Sequence[StoredEvent],
    day: dt.date,
    seen: set[str],
    result: PartitionLoad,
    ingested_at: dt.datetime,
    run_id: str,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    good: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    for event in events:
        if event.event_date != day:
            raise ValueError(f"{source_reference(event)}: belongs to {event.event_date}, not {day}")
        result.max_inbox_id = max(result.max_inbox_id, event.id)
        if event.event_id in seen:
            result.duplicates += 1
            continue
        seen.add(event.event_id)
        result.event_types[event.event_type] += 1
        parsed = parse_event(event)
        lineage = _lineage(event, ingested_at, run_id)
        if parsed.ok:
            result.loaded += 1
            result.unknown_types += not parsed.fields["is_known_type"]
            good.append({**parsed.fields, "body": _body_text(event), PARTITION_COLUMN: day, **lineage})
        else:
            result.quarantined += 1
            result.reasons.update(parsed.reasons)
            bad.append(
                {
                    PARTITION_COLUMN: day,
                    "event_id": event.event_id,
                    "event_type": event.event_type,
                    "_raw_record": _body_text(event),
                    "_reasons": list(parsed.reasons),
                    **lineage,
                }
            )
    return good, bad


def rebuild_partition(
    inbox: Inbox,
    business_date: str,
    *,
    bronze_path: Path,
    quarantine_path: Path,
    run_id: str,
    provider: str = PROVIDER,
    batch_events: int = DEFAULT_BATCH_EVENTS,
    ingested_at: dt.datetime | None = None,
) -> PartitionLoad:
    """Rebuild the bronze and quarantine partition of `business_date` from the provider's inbox events."""
    day = dt.date.fromisoformat(business_date)
    return load_partition(
        inbox.iter_for_dates(provider, [day], batch_size=batch_events),
        business_date=day.isoformat(),
        bronze_path=bronze_path,
        quarantine_path=quarantine_path,
        run_id=run_id,
        ingested_at=ingested_at,
    )
