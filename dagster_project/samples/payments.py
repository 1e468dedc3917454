"""Realistic PSP traffic for the demo and the tests: signed webhook deliveries and payout files.

The webhooks carry the dirt real PSPs send: resent events (same body), a refund delivered before the capture
it refunds, an event type the platform does not know, an event that breaks the edge contract (a currency
that is not an ISO code) and one delivery tampered with after signing, which the receiver must refuse.
The payout files follow the PSP feed's naming contract with a real CRC32 and reconcile with the webhooks,
except for exactly one payout whose file ignores a refund. Everything is deterministic for the given days,
and the truth about it comes along so tests can check that nothing is lost, invented or mis-reconciled.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dagster_project.lib.checksums import crc32_hex
from dagster_project.lib.intake.signatures import sign_stripe
from dagster_project.lib.sources.registry import PSP_PAYOUTS
from dagster_project.samples.partner_files import GeneratedFile

WEBHOOK_PATH = "/webhooks/stripe"
API_VERSION = "2024-06-20"


@dataclass(frozen=True)
class Delivery:
    """One POST as the PSP would send it."""

    event_id: str
    kind: str  # "event", "resend" (same body again) or "tampered" (body changed after signing)
    body: bytes = field(repr=False)
    headers: dict[str, str] = field(repr=False)


@dataclass(frozen=True)
class ChargeTruth:
    status: str
    currency: str
    captured_minor: int
    refunded_minor: int


@dataclass(frozen=True)
class PayoutTruth:
    currency: str
    expected_net_minor: int  # captured - refunds - fees of its charges
    net_paid_minor: int  # what the payout file (and the payout.paid webhook) says was paid
    status: str  # "matched" or "mismatched"


@dataclass
class PaymentsTruth:
    status_codes: dict[int, int]  # expected HTTP answers to the deliveries, by status code
    events_by_date: dict[str, int]  # distinct events stored per UTC event date (received by bronze)
    quarantined_by_date: dict[str, int]
    quarantined_event_ids: list[str]
    resent_event_ids: list[str]
    tampered_event_id: str
    unknown_type_event_id: str
    out_of_order_charge_id: str
    charges: dict[str, ChargeTruth]
    payouts: dict[str, PayoutTruth]
    mismatched_payout_id: str
    mismatch_minor: int  # net paid - expected net of the mismatched payout

    @property
    def stored_events(self) -> int:
        return sum(self.events_by_date.values())

    @property
    def loaded_by_date(self) -> dict[str, int]:
        return {d: n - self.quarantined_by_date.get(d, 0) for d, n in self.events_by_date.items()}


@dataclass
class PaymentsSample:
    deliveries: list[Delivery]
    payout_files: list[GeneratedFile]
    truth: PaymentsTruth


def _fee(amount_minor: int, currency: str) -> int:
    """The PSP's pricing: 1.4% + 0.25 in EUR, 2.9% + 0.30 in USD, rounded half up to the minor unit."""
    if currency == "EUR":
        return (amount_minor * 14 + 500) // 1000 + 25
    return (amount_minor * 29 + 500) // 1000 + 30


def _major(minor: int) -> str:
    sign = "-" if minor < 0 else ""
    return f"{sign}{abs(minor) // 100}.{abs(minor) % 100:02d}"


class _Builder:
    def __init__(self, days: Sequence[dt.date], secret: str, signed_at: int, batch: str = "") -> None:
        self.days, self.secret, self.signed_at = list(days), secret, signed_at
        self.tag = days[0].strftime("%Y%m%d") + batch
        self.events: list[tuple[str, dt.datetime, str, bytes]] = []  # (event id, created, type, body)
        self._next = 0

    def at(self, day: int, hour: int, minute: int = 0) -> dt.datetime:
        return dt.datetime.combine(self.days[day], dt.time(hour, minute), tzinfo=dt.UTC)

    def event(self, event_type: str, created: dt.datetime, obj: dict[str, Any]) -> str:
        self._next += 1
        event_id = f"evt_{self.tag}{self._next:03d}"
        payload = {
            "id": event_id,
            "object": "event",
            "api_version": API_VERSION,
            "created": int(created.timestamp()),
            "livemode": False,
            "pending_webhooks": 1,
            "type": event_type,
            "data": {"object": obj},
        }
        body = json.dumps(payload, separators=(",", ":")).encode()
        self.events.append((event_id, created, event_type, body))
        return event_id

    def sign(self, body: bytes, offset: int = 0) -> dict[str, str]:
        return {
            "Stripe-Signature": sign_stripe(body, self.secret, self.signed_at + offset),
            "Content-Type": "application/json",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        }


def _charge(charge_id: str, amount: int, currency: str, *, refunded: int = 0, failed: bool = False) -> dict:
    fee = _fee(amount, currency)
    obj: dict[str, Any] = {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": 0 if failed else amount,
        "amount_refunded": refunded,
        "currency": currency.lower(),
        "captured": not failed,
        "paid": not failed,
        "refunded": refunded >= amount > 0,
        "status": "failed" if failed else "succeeded",
    }
    if not failed:
        obj["balance_transaction"] = {"id": f"txn_{charge_id[3:]}", "object": "balance_transaction", "fee": fee}
    return obj


def build_payments_sample(
    out_dir: Path,
    days: Sequence[dt.date],
    *,
    secret: str,
    signed_at: int | None = None,
    batch: str = "",
    first_sequence: int = 1,
) -> PaymentsSample:
    """Webhook deliveries for charges over three days and the payout files of the first two.

    `signed_at` (unix seconds, default now) is when the deliveries are signed: the receiver refuses a
    signature older than its tolerance, so post them soon after building them. `batch` goes into every id
    (events, charges, payouts), so that another batch for the same days is new data, not a resend; the payout
    files are numbered from `first_sequence` on.
    """
    if len(days) < 3:
        raise ValueError("the sample spans three days")
    b = _Builder(days, secret, int(time.time()) if signed_at is None else signed_at, batch)
    ch = {n: f"ch_{b.tag}{n:02d}" for n in range(1, 11)}
    charges: dict[str, ChargeTruth] = {}

    def captured(n: int, amount: int, currency: str, when: dt.datetime) -> str:
        charges[ch[n]] = ChargeTruth("captured", currency, amount, 0)
        return b.event("charge.succeeded", when, _charge(ch[n], amount, currency))

    def refunded(n: int, amount: int, currency: str, refund: int, when: dt.datetime) -> str:
        status = "refunded" if refund >= amount else "partially_refunded"
        charges[ch[n]] = ChargeTruth(status, currency, amount, refund)
        return b.event("charge.refunded", when, _charge(ch[n], amount, currency, refunded=refund))

    # Day 1: two charges in EUR (one fully refunded later that day) and one in USD.
    first_resent = captured(1, 2500, "EUR", b.at(0, 9))
    captured(2, 1000, "EUR", b.at(0, 11))
    refunded(2, 1000, "EUR", 1000, b.at(0, 15))
    captured(3, 4200, "USD", b.at(0, 13))
    # Day 2: a charge whose partial refund is delivered before its capture; another partly refunded in USD.
    charges[ch[3]] = ChargeTruth("disputed", "USD", 4200, 0)
    b.event(
        "charge.dispute.created",
        b.at(1, 10),
        {
            "id": f"dp_{b.tag}03",
            "object": "dispute",
            "amount": 4200,
            "currency": "usd",
            "charge": ch[3],
            "status": "needs_response",
            "reason": "fraudulent",
        },
    )
    capture_4 = captured(4, 5000, "EUR", b.at(1, 9))
    refund_4 = refunded(4, 5000, "EUR", 2000, b.at(1, 9, 30))
    captured(5, 1250, "EUR", b.at(1, 12))
    captured(6, 999, "USD", b.at(1, 14))
    refunded(6, 999, "USD", 300, b.at(1, 18))
    # Day 3: a capture not paid out yet, a failed charge, a broken event, an unknown type, a tampered one.
    captured(7, 3000, "EUR", b.at(2, 10))
    charges[ch[8]] = ChargeTruth("failed", "USD", 0, 0)
    b.event("charge.failed", b.at(2, 11), _charge(ch[8], 1500, "USD", failed=True))
    broken = b.event("charge.succeeded", b.at(2, 12), {**_charge(ch[9], 700, "EUR"), "currency": "euro"})
    unknown = b.event("customer.tax_id.created", b.at(2, 13), {"id": f"txi_{b.tag}", "object": "tax_id"})
    tampered = b.event("charge.succeeded", b.at(2, 14), _charge(ch[10], 100, "EUR"))

    # Payouts: a file per day for the previous day's charges, one payout per currency, and payout.paid.
    plan = {
        f"po_{b.tag}A": (1, "EUR", [1, 2]),
        f"po_{b.tag}B": (1, "USD", [3]),
        f"po_{b.tag}C": (2, "EUR", [4, 5]),
        f"po_{b.tag}D": (2, "USD", [6]),
    }
    mismatched = f"po_{b.tag}D"  # its file pays charge 6 in full, ignoring the 3.00 USD refund
    payouts: dict[str, PayoutTruth] = {}
    lines_by_day: dict[int, list[list[str]]] = {1: [], 2: []}
    for payout_id, (day, currency, numbers) in plan.items():
        settled_at = b.at(day, 6)
        expected = paid = 0
        for n in numbers:
            c = charges[ch[n]]
            fee = _fee(c.captured_minor, currency)
            net = c.captured_minor - fee - (0 if payout_id == mismatched else c.refunded_minor)
            expected += c.captured_minor - c.refunded_minor - fee
            paid += net
            lines_by_day[day].append(
                [
                    payout_id,
                    ch[n],
                    _major(c.captured_minor),
                    _major(fee),
                    _major(net),
                    currency,
                    settled_at.isoformat().replace("+00:00", "Z"),
                ]
            )
        payouts[payout_id] = PayoutTruth(currency, expected, paid, "matched" if expected == paid else "mismatched")
        b.event(
            "payout.paid",
            b.at(day, 6, 30),
            {
                "id": payout_id,
                "object": "payout",
                "amount": paid,
                "currency": currency.lower(),
                "status": "paid",
                "arrival_date": int(b.at(day, 0).timestamp()),
            },
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for sequence, (day, lines) in enumerate(sorted(lines_by_day.items()), start=first_sequence):
        text = "\n".join(",".join(row) for row in [list(PSP_PAYOUTS.column_names), *lines]) + "\n"
        data = text.encode()
        business_date = days[day].isoformat()
        path = out_dir / PSP_PAYOUTS.files.file_name(business_date, sequence, crc32_hex(data))
        path.write_bytes(data)
        files.append(GeneratedFile(path, business_date, good=len(lines), bad=0))

    # Deliveries in the order the PSP sends them: by creation, except the refund that overtakes its capture;
    # two events resent (identical bodies, signed again); the tampered body changed after signing.
    order = sorted((e for e in b.events if e[0] != capture_4), key=lambda e: e[1])
    order.insert(next(i for i, e in enumerate(order) if e[0] == refund_4) + 1, _find(b.events, capture_4))
    deliveries: list[Delivery] = []
    for event_id, _, _, body in order:
        headers = b.sign(body)
        if event_id == tampered:
            body = body.replace(b'"amount":100,', b'"amount":100000,', 1)
            deliveries.append(Delivery(event_id, "tampered", body, headers))
        else:
            deliveries.append(Delivery(event_id, "event", body, headers))
    for event_id in (first_resent, refund_4):
        body = _find(b.events, event_id)[3]
        deliveries.append(Delivery(event_id, "resend", body, b.sign(body, offset=60)))

    events_by_date = Counter(created.date().isoformat() for event_id, created, _, _ in b.events if event_id != tampered)
    truth = PaymentsTruth(
        status_codes={200: len(deliveries) - 1, 401: 1},
        events_by_date=dict(sorted(events_by_date.items())),
        quarantined_by_date={days[2].isoformat(): 1},
        quarantined_event_ids=[broken],
        resent_event_ids=[first_resent, refund_4],
        tampered_event_id=tampered,
        unknown_type_event_id=unknown,
        out_of_order_charge_id=ch[4],
        charges={k: v for k, v in charges.items() if k not in (ch[9], ch[10])},
        payouts=payouts,
        mismatched_payout_id=mismatched,
        mismatch_minor=payouts[mismatched].net_paid_minor - payouts[mismatched].expected_net_minor,
    )
    return PaymentsSample(deliveries=deliveries, payout_files=files, truth=truth)


def _find(events: list[tuple[str, dt.datetime, str, bytes]], event_id: str) -> tuple[str, dt.datetime, str, bytes]:
    return next(e for e in events if e[0] == event_id)


def post_deliveries(
    base_url: str,
    deliveries: Sequence[Delivery],
    *,
    client: httpx.Client | None = None,
    path: str = WEBHOOK_PATH,
    timeout: float = 10.0,
) -> dict[int, int]:
    """POST each delivery in order to the receiver at `base_url`; how many answers of each status code.

    `client` may be any `httpx.Client`, e.g. Starlette's `TestClient` around the receiver app.
    """
    counts: Counter[int] = Counter()
    own = client is None
    http = httpx.Client(base_url=base_url, timeout=timeout) if own else client
    try:
        for delivery in deliveries:
            response = http.post(base_url.rstrip("/") + path, content=delivery.body, headers=delivery.headers)
            counts[response.status_code] += 1
    finally:
        if own:
            http.close()
    return dict(sorted(counts.items()))
