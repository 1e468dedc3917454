"""Compile a source declaration into what checks it: header rules, row-level SQL, Arrow and pandera schemas.

Row rules run as one vectorised DuckDB query that types every column and lists every rule a row breaks
(one reason per column at most: a value that is not a number is not also checked against a minimum).
Reasons name the column and the rule, never the value, so they are safe for logs and metadata.
The pandera schema is the typed contract each bronze batch must satisfy before it is committed.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from dagster_project.lib.sources.spec import AirbyteStream, Column, OnSchemaDrift, SourceSpec

if TYPE_CHECKING:
    import pandera.polars as pa_pl

LINEAGE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("_source", pa.string(), nullable=False),
    pa.field("_source_file", pa.string(), nullable=False),
    pa.field("_source_row", pa.int64(), nullable=False),
    pa.field("_checksum_sha256", pa.string(), nullable=False),
    pa.field("_schema_version", pa.int32(), nullable=False),
    pa.field("_received_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("_ingested_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("_run_id", pa.string(), nullable=False),
)
LINEAGE_COLUMNS = tuple(f.name for f in LINEAGE_FIELDS)
PARTITION_COLUMN = "business_date"

# One quarantine schema for every source: the raw record as received (a CSV line, a JSON record, a webhook
# body), where it came from, and every rule it broke.
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field(PARTITION_COLUMN, pa.date32(), nullable=False),
        pa.field("_source", pa.string(), nullable=False),
        pa.field("_source_file", pa.string(), nullable=False),
        # Ordinal of the record among the records the parser could read (as in bronze); null for a line
        # it could not read, which has `_source_line` instead: the line as the parser counts it
        # (header = 1; a quoted field spanning lines counts once).
        pa.field("_source_row", pa.int64()),
        pa.field("_source_line", pa.int64()),
        pa.field("_raw_record", pa.string()),
        pa.field("_reasons", pa.list_(pa.string()), nullable=False),
        pa.field("_checksum_sha256", pa.string(), nullable=False),
        pa.field("_schema_version", pa.int32(), nullable=False),
        pa.field("_received_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("_ingested_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("_run_id", pa.string(), nullable=False),
    ]
)

_ARROW_TYPES = {
    "string": lambda c: pa.string(),
    "int64": lambda c: pa.int64(),
    "decimal": lambda c: pa.decimal128(c.precision, c.scale),
    "date": lambda c: pa.date32(),
    "timestamp": lambda c: pa.timestamp("us", tz="UTC"),
    "boolean": lambda c: pa.bool_(),
}
_DUCKDB_TYPES = {
    "string": lambda c: "VARCHAR",
    "int64": lambda c: "BIGINT",
    "decimal": lambda c: f"DECIMAL({c.precision},{c.scale})",
    "date": lambda c: "DATE",
    "timestamp": lambda c: "TIMESTAMPTZ",
    "boolean": lambda c: "BOOLEAN",
}
# Formats checked before casting: DuckDB's casts accept more than the contract allows
# (e.g. '2025-1-5' as a date, or '12.345' silently rounded into DECIMAL(12,2)).
_FORMATS = {
    "int64": (r"^[+-]?\d+$", "not an integer"),
    "decimal": (None, "not a decimal number"),
    "date": (r"^\d{4}-\d{2}-\d{2}$", "not a calendar date (YYYY-MM-DD)"),
    "timestamp": (
        r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)?$",
        "not an ISO 8601 timestamp",
    ),
    "boolean": (r"^(true|false)$", "not a boolean (true or false)"),
}
# Shapes of a format that a GLOB decides in about half a regular expression's time; each is a subset of the
# format's language, so a value of one of them matches the format, and any other value goes to the pattern.
# A date has one shape: its GLOB is the format itself. (`[0-9]` is `\d`: RE2's `\d` is ASCII.)
_D2 = "[0-9][0-9]"
_DATE_GLOB = f"{_D2}{_D2}-{_D2}-{_D2}"
_SHAPES = {
    "date": (_DATE_GLOB,),
    "timestamp": (f"{_DATE_GLOB}T{_D2}:{_D2}:{_D2}Z", f"{_DATE_GLOB} {_D2}:{_D2}:{_D2}"),
}
_EXACT_GLOB = {"date"}  # formats whose shapes are the whole language: the pattern is never needed


class ContractError(ValueError):
    """The file as a whole breaks the feed contract (its header); the message names the file and the rule."""


# Columns an Airbyte destination adds to every record, kept in bronze after the lineage columns.
AIRBYTE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("_airbyte_raw_id", pa.string(), nullable=False),
    pa.field("_airbyte_extracted_at", pa.timestamp("us", tz="UTC"), nullable=False),
)


def data_fields(spec: SourceSpec) -> list[pa.Field]:
    """The declared columns as Arrow fields."""
    return [pa.field(c.name, _ARROW_TYPES[c.type](c), nullable=c.nullable) for c in spec.columns]


def reader_fields(spec: SourceSpec) -> list[pa.Field]:
    """Fields a reader adds to the declared columns: kept in bronze after the lineage columns."""
    return list(AIRBYTE_FIELDS) if isinstance(spec.reader, AirbyteStream) else []


def bronze_schema(spec: SourceSpec) -> pa.Schema:
    return pa.schema(
        [
            *data_fields(spec),
            pa.field(PARTITION_COLUMN, pa.date32(), nullable=False),
            *LINEAGE_FIELDS,
            *reader_fields(spec),
        ]
    )


def read_header(path: Path, delimiter: str) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        row = next(csv.reader(fh, delimiter=delimiter), [])
    return [name.strip() for name in row]


def resolve_columns(spec: SourceSpec, header: list[str], file_name: str) -> list[str]:
    """The spec columns present in the file; raises ContractError for drift the feed does not allow."""
    expected = list(spec.column_names)
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise ContractError(f"{file_name}: header repeats column(s) {', '.join(duplicated)}")
    unknown = [h for h in header if h not in expected]
    missing = [c for c in expected if c not in header]
    if unknown and spec.on_unknown_column is OnSchemaDrift.FAIL:
        raise ContractError(
            f"{file_name}: unknown column(s) {', '.join(unknown)}; feed {spec.name} "
            f"v{spec.schema_version} expects {', '.join(expected)}"
        )
    if missing:
        required = [c for c in missing if not spec.column(c).nullable]
        if spec.on_missing_column is OnSchemaDrift.FAIL or required:
            raise ContractError(
                f"{file_name}: missing column(s) {', '.join(missing)}; feed {spec.name} "
                f"v{spec.schema_version} requires {', '.join(expected)}"
            )
    return [c for c in expected if c in header]


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _typed_expr(c: Column) -> str:
    raw = _quote(c.name)
    return f"TRY_CAST({raw} AS {_DUCKDB_TYPES[c.type](c)})"


def _format_broken(c: Column, raw: str, pattern: str) -> str:
    """SQL that holds when the value `raw` (not null) does not have the format `pattern`, and is null for a
    null value (which no format rule concerns)."""
    shapes = _SHAPES.get(c.type, ())
    if c.type in _EXACT_GLOB:
        return f"NOT ({' OR '.join(f'{raw} GLOB {_literal(g)}' for g in shapes)})"
    broken = f"NOT regexp_full_match({raw}, {_literal(pattern)})"
    if not shapes:
        return broken
    # CASE decides each value by the first branch that holds, evaluating later branches only for the rest.
    fast = " ".join(f"WHEN {raw} GLOB {_literal(g)} THEN false" for g in shapes)
    return f"CASE {fast} ELSE {broken} END"


def _rules(c: Column, typed: str) -> list[tuple[str, str]]:
    """Every rule of column `c` as (SQL condition that holds when a row breaks it, reason), in order.

    `typed` is the SQL of the column's typed value. A condition may be null instead of false where the value
    is null: every use (a CASE branch, a disjunction under `coalesce(..., false)`) reads both the same way."""
    raw, name = _quote(c.name), c.name
    whens: list[tuple[str, str]] = []
    if not c.nullable:
        whens.append((f"{raw} IS NULL", "required value missing"))
    pattern, message = _FORMATS.get(c.type, (None, ""))
    if c.type == "decimal":
        pattern = rf"^[+-]?\d+(\.\d{{1,{c.scale}}})?$"
        message = f"not a decimal number with at most {c.scale} decimal places"
    if c.type != "string":
        # A value out of format and a value the cast refuses break the same rule (one reason).
        cast_failed = f"({raw} IS NOT NULL AND {typed} IS NULL)"
        broken = f"({_format_broken(c, raw, pattern)}) OR {cast_failed}" if pattern else cast_failed
        whens.append((broken, message or f"not a valid {c.type}"))
    if c.pattern:
        whens.append((f"NOT regexp_full_match({raw}, {_literal(c.pattern)})", "does not match the expected pattern"))
    if c.allowed is not None:
        values = ", ".join(_literal(v) for v in c.allowed)
        whens.append((f"{raw} NOT IN ({values})", f"not one of {', '.join(c.allowed)}"))
    if c.min_value is not None:
        whens.append((f"{typed} < {c.min_value}", f"below the minimum {c.min_value:g}"))
    if c.max_value is not None:
        whens.append((f"{typed} > {c.max_value}", f"above the maximum {c.max_value:g}"))
    return [(condition, f"{name}: {message}") for condition, message in whens]


def _reason_expr(rules: list[tuple[str, str]]) -> str:
    """A CASE that yields the first rule this column breaks, or NULL."""
    cases = " ".join(f"WHEN {condition} THEN {_literal(reason)}" for condition, reason in rules)
    return f"CASE {cases} END" if cases else "NULL"


def _csv_field(name: str) -> str:
    raw = _quote(name)
    return (
        f"CASE WHEN {raw} IS NULL THEN '' "
        f"WHEN regexp_matches({raw}, '[\",\\r\\n]') THEN '\"' || replace({raw}, '\"', '\"\"') || '\"' "
        f"ELSE {raw} END"
    )


def select_sql(spec: SourceSpec, present: list[str], source: str, passthrough: Sequence[str] = ()) -> str:
    """SQL over `source`, a relation of VARCHAR columns: typed columns, `_reasons` (NULL when the row is
    good) and `_raw_record` (the record re-rendered as a CSV line, only for rows that break a rule).
    `passthrough` names further columns of `source` returned unchanged after those (e.g. lineage)."""
    missing = [c.name for c in spec.columns if c.name not in present]
    nulls = "".join(f", NULL::VARCHAR AS {_quote(m)}" for m in missing)
    # Each column is cast once, and its typed value serves both the rules and the output.
    typed = {
        c.name: _quote(f"__typed_{i}") if c.type != "string" else _quote(c.name) for i, c in enumerate(spec.columns)
    }
    casts = "".join(f", {_typed_expr(c)} AS {typed[c.name]}" for c in spec.columns if c.type != "string")
    rules = {c.name: _rules(c, typed[c.name]) for c in spec.columns}
    # Nearly every row is good: one boolean over every rule decides, and only the rows that break one pay
    # for the list of reasons and the re-rendered record (CASE evaluates a branch only for its own rows).
    broken = " OR ".join(f"({condition})" for c in spec.columns for condition, _ in rules[c.name]) or "false"
    reasons = ", ".join(_reason_expr(rules[c.name]) for c in spec.columns)
    record = " || ',' || ".join(_csv_field(c) for c in present) or "''"
    output = ",\n  ".join(f"{typed[c.name]} AS {_quote(c.name)}" for c in spec.columns)
    extra = "".join(f",\n  {_quote(name)}" for name in passthrough)
    return f"""
WITH src AS (SELECT *{nulls} FROM {source}),
typed AS (SELECT *{casts} FROM src),
checked AS (SELECT *, coalesce({broken}, false) AS __broken FROM typed)
SELECT
  {output},
  CASE WHEN __broken THEN list_filter([{reasons}], lambda r: r IS NOT NULL) END AS _reasons,
  CASE WHEN __broken THEN {record} END AS _raw_record{extra}
FROM checked
"""


def pandera_schema(spec: SourceSpec) -> pa_pl.DataFrameSchema:
    """The typed contract of a bronze batch: exactly these columns, in order, with these types and nullability.

    Value rules (patterns, ranges, allowed values) are not repeated here: the contract SQL has already
    sent every row that breaks one to quarantine, and checking them twice would halve throughput.
    """
    unique = set(spec.key) if spec.unique_key and len(spec.key) == 1 else set()
    # Imported where a batch is checked: pandera and polars are heavy, and the code location loads without them.
    import pandera.polars as pa_pl
    import polars as pl

    polars_types = {
        "string": lambda c: pl.String,
        "int64": lambda c: pl.Int64,
        "decimal": lambda c: pl.Decimal(c.precision, c.scale),
        "date": lambda c: pl.Date,
        "timestamp": lambda c: pl.Datetime("us", "UTC"),
        "boolean": lambda c: pl.Boolean,
    }
    reader_types = {"_airbyte_raw_id": pl.String, "_airbyte_extracted_at": pl.Datetime("us", "UTC")}
    columns: dict[str, pa_pl.Column] = {
        c.name: pa_pl.Column(polars_types[c.type](c), nullable=c.nullable, unique=c.name in unique)
        for c in spec.columns
    }
    columns[PARTITION_COLUMN] = pa_pl.Column(pl.Date, nullable=False)
    for f in LINEAGE_FIELDS:
        columns[f.name] = pa_pl.Column(nullable=False)
    for f in reader_fields(spec):
        columns[f.name] = pa_pl.Column(reader_types[f.name], nullable=False)
    return pa_pl.DataFrameSchema(columns, strict=True, name=f"bronze.{spec.name}", ordered=True)
