"""Reading Airbyte destination output from the landing zone, and the sample orders in that format."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from dagster_project.lib.bronze.readers.airbyte_records import edge_schema
from dagster_project.lib.intake.airbyte_destination import (
    AIRBYTE_COLUMNS,
    AirbyteRecordError,
    deduplicate_latest,
    read_airbyte_records,
    read_latest,
)
from dagster_project.lib.sources.registry import ORDERS
from dagster_project.samples.orders import write_sample_orders

EDGE = edge_schema(ORDERS)


def _lines(paths: list[Path]) -> list[dict]:
    out = []
    for path in paths:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as fh:
            out.extend(json.loads(line) for line in fh if line.strip())
    return out


def _write(path: Path, records: list[dict], *, compress: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records)
    if compress:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def _record(order_id: int, extracted: int | str, status: str = "placed", **extra: object) -> dict:
    return {
        "_airbyte_raw_id": f"raw-{order_id}-{extracted}-{status}",
        "_airbyte_extracted_at": extracted,
        "_airbyte_meta": {"sync_id": 1, "changes": []},
        "_airbyte_generation_id": 0,
        "order_id": order_id,
        "customer_id": 1,
        "order_date": "2025-11-05",
        "ordered_at": "2025-11-05T10:00:00Z",
        "total_amount": "10.00",
        "currency": "EUR",
        "status": status,
        **extra,
    }


def test_sample_orders_are_in_airbyte_destination_format(tmp_path: Path) -> None:
    paths = write_sample_orders(tmp_path, orders=300, redeliveries=40, days=5)
    records = _lines(paths)

    assert [p.parent for p in paths] == [tmp_path / "orders"] * 5
    assert all(p.name.endswith(".jsonl") for p in paths)
    for record in records:
        assert set(AIRBYTE_COLUMNS) <= set(record)
        assert isinstance(record["_airbyte_extracted_at"], int)
        assert set(record["_airbyte_meta"]) == {"sync_id", "changes"}
        assert 1 <= record["customer_id"] <= 500
        assert record["status"] in ORDERS.column("status").allowed
        assert record["currency"] in {"EUR", "USD", "GBP"}
        assert Decimal(record["total_amount"]) > 0 and len(record["total_amount"].split(".")[1]) == 2
        assert record["ordered_at"].startswith(record["order_date"])
    assert len({r["_airbyte_raw_id"] for r in records}) == len(records)
    order_ids = [r["order_id"] for r in records]
    assert len(set(order_ids)) == 300
    assert len(order_ids) > 300 + 40  # redeliveries plus exact re-sends within a sync

    # Deterministic for a seed.
    again = write_sample_orders(tmp_path / "again", orders=300, redeliveries=40, days=5)
    assert _lines(again) == records


def test_read_streams_batches_with_airbyte_and_lineage_columns(tmp_path: Path) -> None:
    paths = write_sample_orders(tmp_path, orders=200, redeliveries=20, days=4, compress=True)
    batches = list(read_airbyte_records(tmp_path, EDGE, batch_size=64))

    assert all(p.name.endswith(".jsonl.gz") for p in paths)
    assert len(batches) > 1 and all(b.num_rows <= 64 for b in batches)
    table = pa.Table.from_batches(batches)
    assert table.num_rows == len(_lines(paths))
    assert table.schema.field("_airbyte_extracted_at").type == pa.timestamp("ms", tz="UTC")
    assert table.schema.field("order_id").type == pa.int64()
    first = table.slice(0, 1).to_pylist()[0]
    assert first["_source_file"] == "orders/" + paths[0].name
    assert first["_source_row"] == 1
    assert first["_airbyte_extracted_at"] == datetime(2025, 11, 2, 2, tzinfo=UTC)
    assert first["_airbyte_meta"] == {"sync_id": 5000, "changes": []}


def test_dedup_keeps_the_latest_extraction_per_order(tmp_path: Path) -> None:
    paths = write_sample_orders(tmp_path, orders=400, redeliveries=80, days=6)
    latest = read_latest(tmp_path, "order_id", EDGE, batch_size=50)

    expected: dict[int, dict] = {}
    for record in _lines(paths):  # files are in delivery order; later wins on equal extraction time
        kept = expected.get(record["order_id"])
        if kept is None or record["_airbyte_extracted_at"] >= kept["_airbyte_extracted_at"]:
            expected[record["order_id"]] = record
    rows = latest.to_pylist()
    assert [r["order_id"] for r in rows] == sorted(expected)
    for row in rows:
        want = expected[row["order_id"]]
        assert row["status"] == want["status"]
        assert row["_airbyte_raw_id"] == want["_airbyte_raw_id"]  # exact re-sends: the last one delivered
        assert int(row["_airbyte_extracted_at"].timestamp() * 1000) == want["_airbyte_extracted_at"]
    # Some orders did progress between deliveries, so the test exercises "latest wins".
    first_seen = {}
    for record in _lines(paths):
        first_seen.setdefault(record["order_id"], record["status"])
    assert sum(first_seen[r["order_id"]] != r["status"] for r in rows) >= 10


def test_dedup_tiebreaks_on_generation_then_delivery_order() -> None:
    at = datetime(2025, 11, 5, tzinfo=UTC)
    table = pa.table(
        {
            "order_id": [1, 1, 1, 2, 2],
            "_airbyte_extracted_at": pa.array([at, at, at, at, at], pa.timestamp("ms", tz="UTC")),
            "_airbyte_generation_id": [0, 1, 0, 0, 0],
            "status": ["a", "b", "c", "first", "second"],
        }
    )
    out = deduplicate_latest(table, "order_id")
    assert out.column("status").to_pylist() == ["b", "second"]


def test_dedup_on_a_composite_key() -> None:
    table = pa.table(
        {
            "shop": ["x", "x", "y"],
            "order_id": [1, 1, 1],
            "_airbyte_extracted_at": pa.array([2, 1, 1], pa.timestamp("ms", tz="UTC")),
            "status": ["new", "old", "other-shop"],
        }
    )
    out = deduplicate_latest(table, ["shop", "order_id"])
    assert out.column("status").to_pylist() == ["new", "other-shop"]


def test_dedup_refuses_null_keys() -> None:
    table = pa.table({"order_id": [1, None], "_airbyte_extracted_at": pa.array([1, 2], pa.timestamp("ms", tz="UTC"))})
    with pytest.raises(ValueError, match="null"):
        deduplicate_latest(table, "order_id")


def test_iso_timestamps_and_unflattened_records_are_read(tmp_path: Path) -> None:
    nested = _record(2, "2025-11-05T10:00:01.500+01:00")
    data = {k: nested.pop(k) for k in list(nested) if not k.startswith("_airbyte")}
    nested["_airbyte_data"] = data
    change = {"field": "total_amount", "change": "NULLED", "reason": "SOURCE_SERIALIZATION_ERROR"}
    nested["_airbyte_meta"] = json.dumps({"sync_id": 9, "changes": [change]})
    _write(tmp_path / "orders" / "a.jsonl", [_record(1, "2025-11-05T09:00:00Z"), nested])

    rows = pa.Table.from_batches(read_airbyte_records(tmp_path, EDGE)).to_pylist()
    assert rows[0]["_airbyte_extracted_at"] == datetime(2025, 11, 5, 9, tzinfo=UTC)
    assert rows[1]["_airbyte_extracted_at"] == datetime(2025, 11, 5, 9, 0, 1, 500000, tzinfo=UTC)
    assert rows[1]["order_id"] == 2 and rows[1]["status"] == "placed"
    assert rows[1]["_airbyte_meta"]["changes"] == [change]


def test_schema_is_inferred_when_not_given(tmp_path: Path) -> None:
    _write(tmp_path / "s" / "a.jsonl", [_record(1, 1000, note=None), _record(2, 2000, note="x")])
    [batch] = read_airbyte_records(tmp_path)
    assert batch.schema.field("order_id").type == pa.int64()
    assert batch.schema.field("note").type == pa.string()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps({k: v for k, v in _record(1, 1).items() if k != "_airbyte_raw_id"}), "missing _airbyte_raw_id"),
        (json.dumps(_record(1, "yesterday")), "_airbyte_extracted_at is not an ISO 8601 timestamp"),
        (json.dumps({**_record(1, 1), "order_id": "abc"}), "column 'order_id' expects int64, got a JSON string"),
        (json.dumps({**_record(1, 1), "order_id": None}), "column 'order_id' is required"),
        (json.dumps(_record(1, 1, coupon="X")), "not in the stream schema: ['coupon']"),
    ],
)
def test_bad_records_are_named_by_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "orders" / "b.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_record(7, 1)) + "\n\n" + line + "\n")
    key = EDGE.get_field_index("order_id")
    strict = EDGE.set(key, EDGE.field(key).with_nullable(False))  # a stream schema that requires the key
    with pytest.raises(AirbyteRecordError) as raised:
        list(read_airbyte_records(tmp_path, strict))
    assert (raised.value.file, raised.value.line) == ("orders/b.jsonl", 3)
    assert reason in str(raised.value)
    assert str(raised.value).startswith("orders/b.jsonl:3: ")
    for value in ("yesterday", "abc", 'coupon": "X'):  # record values never reach the message
        assert value not in str(raised.value)


def test_unknown_columns_can_be_ignored(tmp_path: Path) -> None:
    _write(tmp_path / "o" / "a.jsonl", [_record(1, 1, coupon="X")])
    [batch] = read_airbyte_records(tmp_path, EDGE, on_unknown_column="ignore")
    assert "coupon" not in batch.schema.names


def test_empty_directory_reads_as_an_empty_table(tmp_path: Path) -> None:
    assert list(read_airbyte_records(tmp_path, EDGE)) == []
    empty = read_latest(tmp_path, "order_id", EDGE)
    assert empty.num_rows == 0 and "order_id" in empty.schema.names
