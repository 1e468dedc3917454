"""Customer records and CSV text for the library tests (plain helpers; the fixtures are in conftest.py)."""

from __future__ import annotations

import datetime as dt

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
