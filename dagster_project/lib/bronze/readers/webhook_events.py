"""Reader for webhook events: the inbox events of one provider and business date, checked against the edge contract.

A partition holds the events whose creation time falls on its date (UTC), the business date the inbox
already indexes them by. Events stream in inbox-sized batches in inbox id order; a repeated event id is
dropped as a duplicate (the receiver already stores one row per provider and event id; this is the
defensive second line), so memory holds only the set of event ids seen.

How fields are read from a body depends on its shape (`WebhookEvents.payload`); every rule an event breaks
is recorded, named by field, never by value.

Stripe (`payload: stripe`):
- the body is a JSON object whose `data.object` is a JSON object with an `object` type;
- amounts (`amount`, `amount_refunded`, `balance_transaction.fee`) are non-negative integers (minor units);
- `currency` is a three-letter ISO 4217 code (Stripe sends it lower case; bronze stores it upper case);
- a known charge, dispute or payout event names its charge or payout and carries an amount and a currency.
Event types this reader does not know are kept and flagged (`is_known_type = false`), not dropped: the
PSP adds types over time and silver decides what to do with them.

Standard Webhooks (`payload: standard`): the body is a JSON object whose `data` is a JSON object; `data.id`,
when present, is a non-empty string (the object the event is about).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from dagster_project.lib.bronze.contract import data_fields
from dagster_project.lib.bronze.engine import RAW_RECORD, REASONS, OriginLoad
from dagster_project.lib.intake.inbox import StoredEvent
from dagster_project.lib.sources.spec import SourceSpec

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


def source_reference(event: StoredEvent) -> str:
    """The lineage reference of an inbox event (`_source_file`): where to find its raw body again."""
    return f"inbox:{event.provider}:{event.id}"


def _object(body: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return payload if isinstance(payload, dict) else None


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


def parse_stripe_event(event: StoredEvent) -> ParsedEvent:
    """Type one stored Stripe event and check it against the edge contract."""
    reasons: list[str] = []
    fields: dict[str, Any] = {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "event_created_at": event.event_created_at,
        "is_known_type": event.event_type in KNOWN_EVENT_TYPES,
    }
    payload = _object(event.body)
    if payload is None:
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


def parse_standard_event(event: StoredEvent) -> ParsedEvent:
    """Type one stored Standard Webhooks event: `type`, `timestamp` and the id of `data` (the receiver already
    read the message id, type and timestamp when it verified the delivery)."""
    fields: dict[str, Any] = {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "event_created_at": event.event_created_at,
    }
    payload = _object(event.body)
    if payload is None:
        return ParsedEvent(fields, ("body: not a JSON object",))
    data = payload.get("data")
    if not isinstance(data, dict):
        return ParsedEvent(fields, ("data: required object missing",))
    reasons: list[str] = []
    fields["subject_id"] = _text(data, "id", "data.id", reasons)
    return ParsedEvent(fields, tuple(reasons))


PARSERS: dict[str, Callable[[StoredEvent], ParsedEvent]] = {
    "stripe": parse_stripe_event,
    "standard": parse_standard_event,
}


class WebhookEventsReader:
    """The inbox events of one partition, given as batches in inbox id order (`Inbox.iter_for_dates`)."""

    def __init__(self, spec: SourceSpec, batches: Iterable[Sequence[StoredEvent]], business_date: str):
        self.spec, self.batches = spec, batches
        self.business_date = dt.date.fromisoformat(business_date)
        self.parse = PARSERS[spec.webhook.payload]
        self.origin = OriginLoad(f"inbox:{spec.webhook.provider}")
        self.origins = [self.origin]
        self.schema = pa.schema(
            [
                *(f.with_nullable(True) for f in data_fields(spec)),
                pa.field("_source_file", pa.string()),
                pa.field("_source_row", pa.int64()),
                pa.field("_checksum_sha256", pa.string()),
                pa.field("_received_at", pa.timestamp("us", tz="UTC")),
                pa.field(REASONS, pa.list_(pa.string())),
                pa.field(RAW_RECORD, pa.string()),
            ]
        )
        self.max_inbox_id = 0
        self.event_types: Counter[str] = Counter()
        self.unknown_types = 0

    def details(self) -> dict[str, Any]:
        details: dict[str, Any] = {
            "event_types": dict(sorted(self.event_types.items())),
            "inbox_max_id": self.max_inbox_id,
        }
        if "is_known_type" in self.spec.column_names:
            details["unknown_event_types"] = self.unknown_types
        return details

    def read(self, batch_rows: int) -> Iterator[tuple[OriginLoad, pa.RecordBatch]]:
        # Batches are the inbox's own pages; `batch_rows` does not re-slice them.
        seen: set[str] = set()
        for events in self.batches:
            rows = [row for event in events if (row := self._row(event, self.business_date, seen)) is not None]
            if rows:
                yield self.origin, pa.RecordBatch.from_pylist(rows, schema=self.schema)

    def _row(self, event: StoredEvent, day: dt.date, seen: set[str]) -> dict[str, Any] | None:
        if event.event_date != day:
            raise ValueError(f"{source_reference(event)}: belongs to {event.event_date}, not {day}")
        self.max_inbox_id = max(self.max_inbox_id, event.id)
        if event.event_id in seen:
            self.origin.duplicates += 1  # the first (lowest inbox id) is kept
            return None
        seen.add(event.event_id)
        self.event_types[event.event_type] += 1
        parsed = self.parse(event)
        body = event.body.decode("utf-8", errors="replace")  # the receiver only stores UTF-8; never fail on it
        if parsed.ok and parsed.fields.get("is_known_type") is False:
            self.unknown_types += 1
        return {
            **parsed.fields,
            "body": body,
            "_source_file": source_reference(event),
            "_source_row": event.id,
            "_checksum_sha256": event.body_sha256,
            "_received_at": event.received_at,
            REASONS: None if parsed.ok else list(parsed.reasons),
            RAW_RECORD: None if parsed.ok else body,
        }
