"""Feed contracts: each file feed is declared once, and everything else is derived from the declaration.

A declaration names the columns with their types and rules, the business key, the schema version and what
to do with unknown or missing columns. From it the platform derives the file-name contract, the DuckDB
SQL that types every row and lists every rule it breaks, the bronze Arrow schema, and the pandera schema
that each bronze batch must satisfy. Adding a feed is a new `FeedSpec` in `FEEDS` plus a dbt staging model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

ColumnType = Literal["string", "int64", "decimal", "date", "timestamp"]


class OnSchemaDrift(StrEnum):
    FAIL = "fail"  # reject the whole file with a clear error naming the column
    IGNORE = "ignore"  # unknown: drop the column; missing: load it as null (nullable columns only)


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    nullable: bool = True
    pattern: str | None = None  # RE2 regular expression the whole value must match
    min_value: float | None = None
    max_value: float | None = None
    allowed: tuple[str, ...] | None = None
    precision: int = 18  # decimals only
    scale: int = 2  # decimals only
    pii: bool = False  # raw value never leaves bronze; silver keeps only a keyed token
    description: str = ""


@dataclass(frozen=True)
class FeedSpec:
    name: str  # bronze table name
    system: str  # sender, first part of the file name
    entity: str  # second part of the file name
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    schema_version: int
    description: str
    on_unknown_column: OnSchemaDrift = OnSchemaDrift.FAIL
    on_missing_column: OnSchemaDrift = OnSchemaDrift.FAIL
    delimiter: str = ","
    extension: str = "csv"
    owners: tuple[str, ...] = field(default_factory=tuple)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def file_prefix(self) -> str:
        return f"{self.system}_{self.entity}_"

    @property
    def file_name_regex(self) -> re.Pattern[str]:
        return re.compile(
            rf"^{re.escape(self.system)}_{re.escape(self.entity)}_"
            r"(?P<business_date>\d{4}-\d{2}-\d{2})_seq-(?P<sequence>\d{5})_crc32-(?P<crc32>[0-9A-Fa-f]{8})"
            rf"\.{re.escape(self.extension)}\Z",
            re.ASCII,  # `\d` is [0-9] only, and `\Z` (unlike `$`) does not accept a trailing newline
        )

    def file_name(self, business_date: str, sequence: int, crc32_hex: str) -> str:
        return (
            f"{self.system}_{self.entity}_{business_date}_seq-{sequence:05d}_crc32-{crc32_hex.upper()}.{self.extension}"
        )


EMAIL_PATTERN = r"^[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}$"

CUSTOMERS = FeedSpec(
    name="customers",
    system="acme",
    entity="customers",
    description="Daily customer export from the CRM partner, one row per customer change.",
    schema_version=1,
    key=("customer_id",),
    owners=("team:crm-data",),
    columns=(
        Column("customer_id", "int64", nullable=False, min_value=1, description="CRM customer id"),
        Column("email", "string", nullable=False, pattern=EMAIL_PATTERN, pii=True),
        Column("first_name", "string", pii=True),
        Column("last_name", "string", pii=True),
        Column("country_code", "string", pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2"),
        Column("signup_date", "date", nullable=False),
        Column("lifetime_value", "decimal", precision=12, scale=2, min_value=0),
        Column("status", "string", nullable=False, allowed=("active", "inactive", "closed")),
        Column("updated_at", "timestamp", nullable=False, description="Change time at the CRM, ISO 8601"),
    ),
)

PSP_PAYOUTS = FeedSpec(
    name="psp_payouts",
    system="psp",
    entity="payouts",
    description="Daily payout (settlement) file from the payment service provider, one row per charge in a payout.",
    schema_version=1,
    key=("payout_id", "charge_id"),
    owners=("team:payments-data",),
    columns=(
        Column("payout_id", "string", nullable=False, pattern=r"^po_[A-Za-z0-9]+$", description="PSP payout id"),
        Column("charge_id", "string", nullable=False, pattern=r"^ch_[A-Za-z0-9]+$", description="PSP charge id"),
        Column("gross", "decimal", nullable=False, min_value=0, description="Amount captured for the charge"),
        Column("fee", "decimal", nullable=False, min_value=0, description="PSP fee deducted for the charge"),
        Column("net", "decimal", nullable=False, description="Paid out for the charge: gross - refunds - fee"),
        Column("currency", "string", nullable=False, pattern=r"^[A-Z]{3}$", description="ISO 4217, upper case"),
        Column("settled_at", "timestamp", nullable=False, description="Settlement time at the PSP, ISO 8601"),
    ),
)

FEEDS: dict[str, FeedSpec] = {spec.name: spec for spec in (CUSTOMERS, PSP_PAYOUTS)}


def feed_for_file(file_name: str) -> FeedSpec | None:
    """The feed whose naming contract this file name claims (by prefix), if any."""
    for spec in FEEDS.values():
        if file_name.startswith(spec.file_prefix):
            return spec
    return None
