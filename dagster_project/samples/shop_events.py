"""Sample shop webhooks (Standard Webhooks): order notifications signed as the shop sends them, for the demo."""

from __future__ import annotations

import datetime as dt
import json
import random
import time

from dagster_project.lib.intake.signatures import sign_standard
from dagster_project.lib.sources.registry import SHOP_EVENTS
from dagster_project.samples.payments import Delivery

WEBHOOK_PATH = f"/webhooks/{SHOP_EVENTS.webhook.provider}"
EVENT_TYPES = ("order.created", "order.shipped", "order.delivered", "return.requested")


def build_shop_deliveries(
    days: list[dt.date],
    *,
    secret: str,
    per_day: int = 12,
    seed: int = 7,
    now: float | None = None,
    batch: str = "",
) -> list[Delivery]:
    """Signed deliveries for orders of `days`: `per_day` events a day, one of them sent twice (a redelivery).

    Signatures carry `now` (the sending time, within the receiver's tolerance); each body's `timestamp` is when
    the event happened on its business day. `batch` goes into the message ids: another batch is new events.
    """
    rng = random.Random(seed)
    signed_at = int(now if now is not None else time.time())
    deliveries: list[Delivery] = []
    for day in days:
        for i in range(per_day):
            message_id = f"msg_{day:%Y%m%d}_{batch}{i:03d}"
            happened = dt.datetime.combine(day, dt.time(8), tzinfo=dt.UTC) + dt.timedelta(minutes=37 * i)
            payload = {
                "type": rng.choice(EVENT_TYPES),
                "timestamp": happened.isoformat(),
                "data": {"id": f"ord_{rng.randint(100_001, 100_999)}"},
            }
            body = json.dumps(payload, separators=(",", ":")).encode()
            headers = {"content-type": "application/json", **sign_standard(body, secret, message_id, signed_at)}
            deliveries.append(Delivery(message_id, "event", body, headers))
        deliveries.append(Delivery(deliveries[-1].event_id, "resend", deliveries[-1].body, deliveries[-1].headers))
    return deliveries
