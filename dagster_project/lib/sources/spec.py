"""What a source declaration is made of: columns with their types and rules, and how the source is read.

A `SourceSpec` is the one declaration of a source. Everything else derives from it: the file-name contract
of partner files, the DuckDB SQL that types every record and lists every rule it breaks, the bronze Arrow
and pandera schemas, the bronze gate, the dbt plugin's schemas, the PII lists, the Dagster assets, checks,
jobs, sensor routing and freshness policies, and the webhook receiver's provider routing. `registry.py`
holds the declarations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, Literal, TypeVar

ColumnType = Literal["string", "int64", "decimal", "date", "timestamp", "boolean"]
SignatureScheme = Literal["stripe", "standard"]
# How a data subject is named (`medallion erase`): a CRM customer id, or an e-mail address.
SubjectKind = Literal["customer_id", "email"]


class OnErasure(StrEnum):
    DELETE = "delete"  # a record naming an erased subject is removed (the subject's own data)
    REDACT = "redact"  # the record stays; its identifying values are removed (a transaction, an event)


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
    # The data subject this column's value names (erasure finds a subject's records by it); for a free-text
    # column (a webhook body), the e-mail addresses found in the text.
    identifies: SubjectKind | None = None
    free_text: bool = False


# --- how a source is read: one kind per input format, each with a reader in lib/bronze/readers ------------


@dataclass(frozen=True)
class PartnerFiles:
    """Delimited text files a partner drops on SFTP, named
    `<system>_<entity>_<YYYY-MM-DD>_seq-<NNNNN>_crc32-<8 hex>.<extension>`; the date in the name is the
    business date (the partition)."""

    kind: ClassVar[str] = "partner_files"
    system: str  # sender, first part of the file name
    entity: str  # second part of the file name
    delimiter: str = ","
    extension: str = "csv"

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

    @property
    def naming_contract(self) -> str:
        return f"{self.system}_{self.entity}_<YYYY-MM-DD>_seq-<5 digits>_crc32-<8 hex>.{self.extension}"

    def file_name(self, business_date: str, sequence: int, crc32_hex: str) -> str:
        return (
            f"{self.system}_{self.entity}_{business_date}_seq-{sequence:05d}_crc32-{crc32_hex.upper()}.{self.extension}"
        )


@dataclass(frozen=True)
class AirbyteStream:
    """Records an Airbyte destination writes into the landing zone as JSON Lines
    (`<landing>/<destination_dir>/<stream>/...jsonl[.gz]`), delivered at least once. The record's
    `partition_column` is its business date."""

    kind: ClassVar[str] = "airbyte_records"
    connection: str  # the Airbyte connection (and the name of the sync asset)
    destination_dir: str  # the destination's folder under the lake's landing root
    stream: str  # the stream's folder inside it
    partition_column: str


@dataclass(frozen=True)
class WebhookEvents:
    """Signed webhook deliveries of one provider (`POST /webhooks/<provider>`), verified on the raw body
    and committed to the durable inbox by the receiver; the event's creation date (UTC) is its business
    date. `payload` names the body's shape, which decides how fields are read from it."""

    kind: ClassVar[str] = "webhook_events"
    provider: str  # URL segment and inbox provider; its secrets are MEDALLION_WEBHOOK_SECRETS_<PROVIDER>
    scheme: SignatureScheme
    payload: Literal["stripe", "standard"]


Reader = PartnerFiles | AirbyteStream | WebhookEvents


# --- when a source's data is due: checked against what bronze loaded (freshness) ------------------------------


@dataclass(frozen=True)
class DailyDeadline:
    """A delivery is due by `time` on each of `days`: bronze must have loaded something new in the 24 hours
    before every deadline (a partner file each business day, say)."""

    time: str  # HH:MM, in `timezone`
    days: str = "mon-fri"  # the weekdays a deadline falls on, as a cron day-of-week field
    timezone: str = "UTC"  # IANA name

    def __post_init__(self) -> None:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", self.time):
            raise ValueError(f"DailyDeadline.time {self.time!r}: expected HH:MM, 00:00 to 23:59")

    @property
    def cron(self) -> str:
        hour, minute = self.time.split(":")
        return f"{int(minute)} {int(hour)} * * {self.days}"

    def describe(self) -> str:
        return f"new data by {self.time} {self.timezone} every {self.days}"


@dataclass(frozen=True)
class MaxAge:
    """Data arrives continuously (webhooks, scheduled syncs): the newest load is at most `hours` old,
    with a warning after `warn_hours`."""

    hours: float
    warn_hours: float | None = None

    def __post_init__(self) -> None:
        if self.warn_hours is not None and not 0 < self.warn_hours < self.hours:
            raise ValueError(f"MaxAge: warn_hours ({self.warn_hours}) must be between 0 and hours ({self.hours})")

    def describe(self) -> str:
        return f"new data at least every {self.hours:g} hours"


Freshness = DailyDeadline | MaxAge
R = TypeVar("R", PartnerFiles, AirbyteStream, WebhookEvents)


@dataclass(frozen=True)
class SourceSpec:
    name: str  # bronze (and quarantine) table name
    description: str
    reader: Reader
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    schema_version: int
    dbt_source: str  # the dbt source (and staging folder) that reads the bronze table
    owners: tuple[str, ...] = field(default_factory=tuple)
    # True when bronze keeps one row per key in a partition (the reader deduplicates); the gate checks it.
    unique_key: bool = False
    on_unknown_column: OnSchemaDrift = OnSchemaDrift.FAIL
    on_missing_column: OnSchemaDrift = OnSchemaDrift.FAIL
    # When new data is due in bronze; None: no expectation (the asset carries no freshness policy).
    freshness: Freshness | None = None
    # What erasing a data subject does to a record that names it (columns with `identifies`).
    on_erasure: OnErasure = OnErasure.DELETE

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def pii_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.pii)

    @property
    def subject_columns(self) -> tuple[Column, ...]:
        """The columns that name a data subject (see `Column.identifies`)."""
        return tuple(c for c in self.columns if c.identifies is not None)

    @property
    def lineage_source(self) -> str:
        """The `_source` lineage value: which intake delivered the records."""
        reader = self.reader
        if isinstance(reader, PartnerFiles):
            return "sftp"
        if isinstance(reader, AirbyteStream):
            return f"airbyte:{reader.connection}/{reader.stream}"
        return f"webhook:{reader.provider}"

    def _read_as(self, kind: type[R]) -> R:
        if not isinstance(self.reader, kind):
            raise TypeError(f"source {self.name} is read from {self.reader.kind}, not from {kind.kind}")
        return self.reader

    @property
    def files(self) -> PartnerFiles:
        """The file-naming contract of a partner file source."""
        return self._read_as(PartnerFiles)

    @property
    def webhook(self) -> WebhookEvents:
        """The provider and payload of a webhook source."""
        return self._read_as(WebhookEvents)

    @property
    def airbyte(self) -> AirbyteStream:
        """The connection and stream of an Airbyte source."""
        return self._read_as(AirbyteStream)
