"""Customer records and CSV text for the library tests (plain helpers; the fixtures are in conftest.py)."""

from __future__ import annotations

import datetime as dt
import zlib

from dagster_project.lib.checksums import crc32_hex
from dagster_project.lib.sources.registry import CUSTOMERS
from dagster_project.samples.partner_files import csv_line

RECEIVED_AT = dt.datetime(2025, 11, 5, 7, 30, tzinfo=dt.UTC)

GOOD_CUSTOMER = {
    "customer_id": "1",
    "email": "ada.lovelace1@example.com",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "country_code": "GB",
    "signup_date": "2025-01-05",
    "lifetime_value": "10.50",
    "status": "active",
    "updated_at": "2025-11-05T06:00:00Z",
}


def customer(customer_id: int = 1, /, **overrides: str | None) -> dict[str, str | None]:
    """A customer record that keeps every rule of the contract, with some values replaced."""
    row = dict(GOOD_CUSTOMER, customer_id=str(customer_id), email=f"ada.lovelace{customer_id}@example.com")
    row.update(overrides)
    return row


def customers_csv(rows: list[dict[str, str | None]], *, header: list[str] | None = None, newline: str = "\n") -> str:
    header = list(CUSTOMERS.column_names) if header is None else header
    lines = [",".join(header)] + [csv_line([r.get(c) or "" for c in header]) for r in rows]
    return newline.join(lines) + newline


def same_crc32(data: bytes, other: bytes) -> bytes:
    """`other` with four bytes appended so that its CRC32 equals that of `data`: a different file the naming
    contract cannot tell apart (CRC32 is linear, so the four bytes are found by walking its table back)."""
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    by_top_byte = {t >> 24: i for i, t in enumerate(table)}
    state, wanted = zlib.crc32(other) ^ 0xFFFFFFFF, zlib.crc32(data) ^ 0xFFFFFFFF
    indexes = []
    for _ in range(4):
        indexes.append(by_top_byte[wanted >> 24])
        wanted = ((wanted ^ table[indexes[-1]]) << 8) & 0xFFFFFFFF
    tail = bytearray()
    for k in reversed(indexes):
        tail.append((state ^ k) & 0xFF)
        state = (state >> 8) ^ table[k]
    forged = other + bytes(tail)
    assert crc32_hex(forged) == crc32_hex(data) and forged != data
    return forged
