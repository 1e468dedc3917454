"""Sample shop orders as an Airbyte destination writes them (JSON Lines records), for the demo and tests."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import random
import tempfile
import uuid
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from dagster_project.lib.bronze.readers.airbyte_records import edge_schema, landing_prefix, stream_folder
from dagster_project.lib.intake.airbyte_destination import EXTRACTED_AT, GENERATION_ID, META, RAW_ID, read_latest
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.registry import ORDERS


def write_sample_orders(
    directory: str | Path,
    *,
    orders: int = 500,
    redeliveries: int = 60,
    start_date: date = date(2025, 11, 1),
    days: int = 7,
    customers: int = 500,
    seed: int = 7,
    compress: bool = False,
    generation_id: int = 0,
) -> list[Path]:
    """Write shop orders as an Airbyte destination would, one file per daily sync, under `<dir>/orders/`.

    Sync `d` (run at 02:00 UTC the day after) delivers the orders placed on day `d`, plus
    `redeliveries` spread over the syncs: orders of earlier days delivered again with a later
    `_airbyte_extracted_at` and a progressed status (placed -> paid -> shipped, or cancelled), and a few
    exact re-sends within one sync. Customer ids are 1..`customers`, as in the customers feed sample.
    Returns the files written. Deterministic for a given seed.
    """
    if days < 1 or orders < 0 or redeliveries < 0:
        raise ValueError("days must be >= 1, orders and redeliveries >= 0")
    rng = random.Random(seed)
    out_dir = Path(directory) / "orders"
    out_dir.mkdir(parents=True, exist_ok=True)

    per_day: list[list[dict[str, Any]]] = [[] for _ in range(days)]
    for i in range(orders):
        day = i * days // max(orders, 1)
        order_date = start_date + timedelta(days=day)
        ordered_at = datetime(order_date.year, order_date.month, order_date.day, tzinfo=UTC) + timedelta(
            seconds=rng.randrange(86400)
        )
        per_day[day].append(
            {
                "order_id": 100_001 + i,
                "customer_id": rng.randint(1, customers),
                "order_date": order_date.isoformat(),
                "ordered_at": ordered_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "total_amount": f"{Decimal(rng.randint(500, 50_000)) / 100:.2f}",
                "currency": rng.choice(("EUR", "EUR", "EUR", "USD", "GBP")),
                "status": rng.choice(("placed", "placed", "paid")),
            }
        )

    latest: dict[int, dict[str, Any]] = {}
    deliveries: list[list[dict[str, Any]]] = [list(day) for day in per_day]
    for day in range(days):
        for order in per_day[day]:
            latest[order["order_id"]] = order
        if day == 0:
            continue
        # Redeliveries of earlier orders in this sync.
        earlier = [o for d in range(day) for o in per_day[d]]
        share = redeliveries // (days - 1) + (1 if day <= redeliveries % (days - 1) else 0)
        for order in rng.sample(earlier, min(share, len(earlier))):
            current = latest[order["order_id"]]
            updated = {**current, "status": _next_status(current["status"], rng)}
            latest[order["order_id"]] = updated
            deliveries[day].append(updated)

    written: list[Path] = []
    for day, records in enumerate(deliveries):
        sync_date = start_date + timedelta(days=day + 1)
        sync_started = datetime(sync_date.year, sync_date.month, sync_date.day, 2, tzinfo=UTC)
        sync_id = 5000 + day
        epoch_ms = int(sync_started.timestamp() * 1000)
        lines: list[str] = []
        for n, data in enumerate(records):
            extracted = epoch_ms + n * 10
            lines.append(_record_line(rng, data, extracted, sync_id, generation_id))
            if n % 50 == 7:
                # At-least-once: the same record sent twice in one sync (new raw id, same extraction time).
                lines.append(_record_line(rng, data, extracted, sync_id, generation_id))
        suffix = ".jsonl.gz" if compress else ".jsonl"
        path = out_dir / f"{sync_date:%Y_%m_%d}_{epoch_ms}_0{suffix}"
        payload = ("\n".join(lines) + "\n").encode() if lines else b""
        if compress:
            with gzip.open(path, "wb") as fh:
                fh.write(payload)
        else:
            path.write_bytes(payload)
        written.append(path)
    return written


def land_sample_orders(lake: Lake | str | Path, days: list[dt.date], *, customers: int = 600, seed: int = 7) -> dict:
    """Write sample Airbyte destination output for orders placed on `days` into the lake's landing zone, where
    the destination writes the stream (`landing/shop/orders/`), on a local lake or an object store.

    `days` must be consecutive. One sync file per day, with at-least-once redeliveries; customer ids are
    1..`customers`, as in the customers feed sample. Rewriting the same days gives the same files.
    Returns the folder, the files written and the distinct orders per business date.
    """
    if not isinstance(lake, Lake):
        from dagster_project import settings

        lake = Lake.parse(str(lake), settings.lake_storage_options())
    ordered = sorted(set(days))
    if not ordered:
        raise ValueError("days must not be empty")
    if (ordered[-1] - ordered[0]).days + 1 != len(ordered):
        raise ValueError("days must be consecutive")
    folder = stream_folder(ORDERS, lake)
    with tempfile.TemporaryDirectory(prefix="medallion-orders-") as tmp:
        # write_sample_orders writes `<dir>/orders/`: on a local lake that is the stream's folder itself.
        target = Path(folder.root).parent if lake.is_local else Path(tmp)
        files = write_sample_orders(
            target,
            orders=80 * len(ordered),
            redeliveries=12 * (len(ordered) - 1),
            start_date=ordered[0],
            days=len(ordered),
            customers=customers,
            seed=seed,
        )
        if not lake.is_local:
            import obstore

            for path in files:  # as the destination does: one object per sync file, rewritten on a re-sync
                obstore.put(lake.store, f"{landing_prefix(ORDERS)}/{path.name}", path)
    latest = read_latest(folder, "order_id", edge_schema(ORDERS))
    per_date = Counter(latest["order_date"].to_pylist())
    return {
        "directory": folder.root,
        "files": [folder.uri(p.name) for p in files],
        "orders": latest.num_rows,
        "orders_by_date": dict(sorted(per_date.items())),
    }


def _next_status(status: str, rng: random.Random) -> str:
    if status == "placed":
        return "cancelled" if rng.random() < 0.15 else "paid"
    if status == "paid":
        return "shipped"
    return status  # shipped/cancelled: a plain re-send


def _record_line(rng: random.Random, data: Mapping[str, Any], extracted_ms: int, sync_id: int, generation: int) -> str:
    record = {
        RAW_ID: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        EXTRACTED_AT: extracted_ms,
        META: {"sync_id": sync_id, "changes": []},
        GENERATION_ID: generation,
        **data,
    }
    return json.dumps(record, separators=(",", ":"))
