"""The columns of a source's bronze and quarantine tables as a catalog shows them: name, type, nullability,
the rules the contract holds them to, and what they mean.

Derived from the declaration (`SourceSpec.columns`) and the bronze contract's lineage and quarantine
columns. Types are the Arrow types of the Delta tables (`contract.bronze_schema`, `contract.QUARANTINE_SCHEMA`),
spelt as Arrow prints them; a test holds the two equal. This module imports no pyarrow, so that the code
location can describe every table without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass

from dagster_project.lib.sources.spec import AirbyteStream, Column, SourceSpec

PARTITION_COLUMN = "business_date"  # as `contract.PARTITION_COLUMN`


@dataclass(frozen=True)
class CatalogColumn:
    name: str
    type: str  # the Arrow type, as `str(pyarrow type)` prints it
    nullable: bool
    description: str
    pii: bool = False
    unique: bool = False
    rules: tuple[str, ...] = ()  # the declared rules in words (pattern, accepted values, range)


PII_NOTE = "PII: the raw value never leaves bronze; silver keeps only a keyed token."

_TIMESTAMP = "timestamp[us, tz=UTC]"
_TYPES = {
    "string": lambda c: "string",
    "int64": lambda c: "int64",
    "decimal": lambda c: f"decimal128({c.precision}, {c.scale})",
    "date": lambda c: "date32[day]",
    "timestamp": lambda c: _TIMESTAMP,
    "boolean": lambda c: "bool",
}

_PARTITION = CatalogColumn(PARTITION_COLUMN, "date32[day]", False, "Business date of the record: the Delta partition.")

# Every bronze row's lineage, as `contract.LINEAGE_FIELDS`.
LINEAGE: tuple[CatalogColumn, ...] = (
    CatalogColumn("_source", "string", False, "The intake that delivered the record: sftp, webhook:<provider>, ..."),
    CatalogColumn("_source_file", "string", False, "Where the record came from: the landed file, or the inbox event."),
    CatalogColumn(
        "_source_row",
        "int64",
        False,
        "The record's ordinal among those read from its file; a webhook event's inbox id.",
    ),
    CatalogColumn("_checksum_sha256", "string", False, "SHA-256 of the input read: the landed file, the event body."),
    CatalogColumn("_schema_version", "int32", False, "Version of the source declaration the record was read with."),
    CatalogColumn("_received_at", _TIMESTAMP, False, "When the platform received the input (UTC)."),
    CatalogColumn("_ingested_at", _TIMESTAMP, False, "When the load wrote the record to bronze (UTC)."),
    CatalogColumn("_run_id", "string", False, "The Dagster run that loaded the partition."),
)

# What an Airbyte destination adds to every record, as `contract.AIRBYTE_FIELDS`.
AIRBYTE: tuple[CatalogColumn, ...] = (
    CatalogColumn("_airbyte_raw_id", "string", False, "Airbyte's id of the record."),
    CatalogColumn("_airbyte_extracted_at", _TIMESTAMP, False, "When Airbyte extracted the record (UTC)."),
)

# One quarantine table per source, all with this schema, as `contract.QUARANTINE_SCHEMA`.
QUARANTINE: tuple[CatalogColumn, ...] = (
    _PARTITION,
    LINEAGE[0],
    LINEAGE[1],
    CatalogColumn(
        "_source_row",
        "int64",
        True,
        "Ordinal of the record among those read; null for a line the parser could not read.",
    ),
    CatalogColumn(
        "_source_line", "int64", True, "Line of a record the parser could not read (header = 1); null otherwise."
    ),
    CatalogColumn(
        "_raw_record",
        "string",
        True,
        "The record as received (a CSV line, a JSON record, a webhook body). " + PII_NOTE,
        pii=True,
    ),
    CatalogColumn("_reasons", "list<item: string>", False, "Every rule the record broke, naming the column."),
    *LINEAGE[3:],
)


def _rules(c: Column) -> tuple[str, ...]:
    rules = []
    if c.allowed is not None:
        rules.append("one of " + ", ".join(c.allowed))
    if c.pattern is not None:
        rules.append(f"matches {c.pattern}")
    if c.min_value is not None:
        rules.append(f">= {c.min_value:g}")
    if c.max_value is not None:
        rules.append(f"<= {c.max_value:g}")
    return tuple(rules)


def declared_column(spec: SourceSpec, c: Column) -> CatalogColumn:
    description = c.description.rstrip(".") + "." if c.description else ""
    if c.pii:
        description = f"{description} {PII_NOTE}".strip()
    return CatalogColumn(
        c.name,
        _TYPES[c.type](c),
        c.nullable,
        description,
        pii=c.pii,
        unique=spec.unique_key and spec.key == (c.name,),
        rules=_rules(c),
    )


def bronze_columns(spec: SourceSpec) -> tuple[CatalogColumn, ...]:
    """The columns of `bronze.<spec.name>`, in table order: declared, partition, lineage, reader's own."""
    reader = AIRBYTE if isinstance(spec.reader, AirbyteStream) else ()
    return (*(declared_column(spec, c) for c in spec.columns), _PARTITION, *LINEAGE, *reader)


def quarantine_columns() -> tuple[CatalogColumn, ...]:
    """The columns of every `quarantine.<source>` table."""
    return QUARANTINE
