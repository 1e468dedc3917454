"""The feed contract: header drift rules, and the row rules that type every value or say why not."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from dagster_project.lib.bronze.contract import (
    LINEAGE_COLUMNS,
    ContractError,
    bronze_schema,
    read_header,
    resolve_columns,
    select_sql,
)
from dagster_project.lib.sources.registry import CUSTOMERS
from dagster_project.lib.sources.spec import OnSchemaDrift
from tests.lib.customer_files import customer

FILE = "acme_customers_2025-11-05_seq-00001_crc32-1A2B3C4D.csv"
ALL = list(CUSTOMERS.column_names)
EXPECTS = ", ".join(ALL)
LENIENT = dataclasses.replace(CUSTOMERS, on_unknown_column=OnSchemaDrift.IGNORE, on_missing_column=OnSchemaDrift.IGNORE)


# --- header rules -------------------------------------------------------------------------------------------


def test_exact_header_resolves_to_every_column() -> None:
    assert resolve_columns(CUSTOMERS, ALL, FILE) == ALL


def test_reordered_header_resolves_in_feed_order() -> None:
    assert resolve_columns(CUSTOMERS, ALL[::-1], FILE) == ALL


def test_unknown_column_fails_naming_the_file_and_the_column() -> None:
    with pytest.raises(ContractError) as err:
        resolve_columns(CUSTOMERS, [*ALL, "nickname"], FILE)
    assert str(err.value) == f"{FILE}: unknown column(s) nickname; feed customers v1 expects {EXPECTS}"


def test_renamed_column_fails_as_unknown_before_missing() -> None:
    header = ["e_mail" if c == "email" else c for c in ALL]
    with pytest.raises(ContractError, match=rf"^{FILE}: unknown column\(s\) e_mail;"):
        resolve_columns(CUSTOMERS, header, FILE)


def test_missing_column_fails_naming_the_file_and_the_column() -> None:
    header = [c for c in ALL if c != "country_code"]
    with pytest.raises(ContractError) as err:
        resolve_columns(CUSTOMERS, header, FILE)
    assert str(err.value) == f"{FILE}: missing column(s) country_code; feed customers v1 requires {EXPECTS}"


def test_duplicated_header_column_fails() -> None:
    with pytest.raises(ContractError) as err:
        resolve_columns(CUSTOMERS, [*ALL, "email"], FILE)
    assert str(err.value) == f"{FILE}: header repeats column(s) email"


def test_ignore_drops_unknown_columns() -> None:
    assert resolve_columns(LENIENT, [*ALL, "nickname", "loyalty_tier"], FILE) == ALL


def test_ignore_allows_a_missing_nullable_column() -> None:
    header = [c for c in ALL if c not in ("first_name", "country_code")]
    assert resolve_columns(LENIENT, header, FILE) == header


def test_ignore_still_fails_on_a_missing_required_column() -> None:
    with pytest.raises(ContractError, match=rf"^{FILE}: missing column\(s\) email;"):
        resolve_columns(LENIENT, [c for c in ALL if c != "email"], FILE)


def test_ignore_for_unknown_only_still_fails_on_missing() -> None:
    spec = dataclasses.replace(CUSTOMERS, on_unknown_column=OnSchemaDrift.IGNORE)
    with pytest.raises(ContractError, match="missing column"):
        resolve_columns(spec, [c for c in ALL if c != "first_name"], FILE)


def test_read_header_strips_bom_and_spaces(tmp_path: Path) -> None:
    path = tmp_path / FILE
    path.write_bytes(("\ufeff" + ", ".join(ALL) + "\r\n1,a@example.com\r\n").encode())
    assert read_header(path, ",") == ALL


def test_read_header_of_an_empty_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / FILE
    path.write_bytes(b"")
    assert read_header(path, ",") == []


# --- bronze schema ------------------------------------------------------------------------------------------


def test_bronze_schema_types_data_then_partition_then_lineage() -> None:
    schema = bronze_schema(CUSTOMERS)
    assert schema.names == [*ALL, "business_date", *LINEAGE_COLUMNS]
    assert schema.field("customer_id").type == pa.int64()
    assert schema.field("lifetime_value").type == pa.decimal128(12, 2)
    assert schema.field("signup_date").type == pa.date32()
    assert schema.field("updated_at").type == pa.timestamp("us", tz="UTC")
    assert [f.name for f in schema if not f.nullable] == [
        "customer_id",
        "email",
        "signup_date",
        "status",
        "updated_at",
        "business_date",
        *LINEAGE_COLUMNS,
    ]


# --- row rules ----------------------------------------------------------------------------------------------


def _check(rows: list[dict[str, str | None]], present: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the contract SQL over rows of text, as the CSV reader hands them over (empty field = NULL)."""
    present = ALL if present is None else present
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE TABLE src (" + ", ".join(f'"{c}" VARCHAR' for c in present) + ")")
    for row in rows:
        con.execute(f"INSERT INTO src VALUES ({', '.join('?' * len(present))})", [row.get(c) for c in present])
    out = con.sql(select_sql(CUSTOMERS, present, "src")).to_arrow_table().to_pylist()
    con.close()
    return out


def _reasons(**values: str | None) -> list[str] | None:
    return _check([customer(1, **values)])[0]["_reasons"]


def test_good_row_has_no_reasons_and_no_raw_record() -> None:
    [row] = _check([customer(42)])
    assert row["_reasons"] is None
    assert row["_raw_record"] is None
    assert row["customer_id"] == 42
    assert row["signup_date"] == dt.date(2025, 1, 5)
    assert row["lifetime_value"] == Decimal("10.50")
    assert row["updated_at"] == dt.datetime(2025, 11, 5, 6, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("customer_id", None, "customer_id: required value missing"),
        ("customer_id", "abc", "customer_id: not an integer"),
        ("customer_id", "0", "customer_id: below the minimum 1"),
        ("customer_id", "99999999999999999999", "customer_id: not an integer"),
        ("email", None, "email: required value missing"),
        ("email", "not-an-email", "email: does not match the expected pattern"),
        ("email", "n/a", "email: does not match the expected pattern"),
        ("country_code", "de", "country_code: does not match the expected pattern"),
        ("country_code", "DEU", "country_code: does not match the expected pattern"),
        ("signup_date", None, "signup_date: required value missing"),
        ("signup_date", "05/01/2025", "signup_date: not a calendar date (YYYY-MM-DD)"),
        ("lifetime_value", "-12.50", "lifetime_value: below the minimum 0"),
        ("lifetime_value", "ten", "lifetime_value: not a decimal number with at most 2 decimal places"),
        ("lifetime_value", "12345678901.00", "lifetime_value: not a decimal number with at most 2 decimal places"),
        ("status", None, "status: required value missing"),
        ("status", "deleted", "status: not one of active, inactive, closed"),
        ("status", "Active", "status: not one of active, inactive, closed"),
        ("updated_at", None, "updated_at: required value missing"),
        ("updated_at", "2025-11-05T25:00:00Z", "updated_at: not an ISO 8601 timestamp"),
    ],
)
def test_each_rule_gives_its_reason(column: str, value: str | None, reason: str) -> None:
    assert _reasons(**{column: value}) == [reason]


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("customer_id", "1.5", "customer_id: not an integer"),
        ("customer_id", "0x10", "customer_id: not an integer"),
        ("customer_id", "1_000", "customer_id: not an integer"),
        ("customer_id", " 7", "customer_id: not an integer"),
        ("customer_id", "1e3", "customer_id: not an integer"),
        ("signup_date", "2025-1-5", "signup_date: not a calendar date (YYYY-MM-DD)"),
        ("signup_date", "2025-02-30", "signup_date: not a calendar date (YYYY-MM-DD)"),
        ("signup_date", "2025-01-05 00:00:00", "signup_date: not a calendar date (YYYY-MM-DD)"),
        ("lifetime_value", "12.345", "lifetime_value: not a decimal number with at most 2 decimal places"),
        ("lifetime_value", "1e3", "lifetime_value: not a decimal number with at most 2 decimal places"),
        ("lifetime_value", ".5", "lifetime_value: not a decimal number with at most 2 decimal places"),
        ("lifetime_value", "1,50", "lifetime_value: not a decimal number with at most 2 decimal places"),
        ("updated_at", "yesterday", "updated_at: not an ISO 8601 timestamp"),
        ("updated_at", "now", "updated_at: not an ISO 8601 timestamp"),
        ("updated_at", "epoch", "updated_at: not an ISO 8601 timestamp"),
        ("updated_at", "2025-11-05", "updated_at: not an ISO 8601 timestamp"),
    ],
)
def test_lenient_duckdb_casts_are_refused(column: str, value: str, reason: str) -> None:
    assert _reasons(**{column: value}) == [reason]


@pytest.mark.parametrize(
    ("column", "value", "typed"),
    [
        ("customer_id", "+5", 5),
        ("customer_id", "9223372036854775807", 9223372036854775807),
        ("signup_date", "2024-02-29", dt.date(2024, 2, 29)),
        ("lifetime_value", "12", Decimal("12.00")),
        ("lifetime_value", "12.3", Decimal("12.30")),
        ("lifetime_value", "0", Decimal("0.00")),
        ("lifetime_value", "9999999999.99", Decimal("9999999999.99")),
        ("lifetime_value", None, None),
        ("country_code", None, None),
        ("first_name", None, None),
    ],
)
def test_values_within_the_contract_are_typed(column: str, value: str | None, typed: object) -> None:
    [row] = _check([customer(5, **{column: value})])
    assert row["_reasons"] is None
    assert row[column] == typed


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2025-11-05T08:00:00+02:00", dt.datetime(2025, 11, 5, 6, 0)),
        ("2025-11-05T01:00:00-05:00", dt.datetime(2025, 11, 5, 6, 0)),
        ("2025-11-05T06:00:00+0530", dt.datetime(2025, 11, 5, 0, 30)),
        ("2025-11-05T06:00:00Z", dt.datetime(2025, 11, 5, 6, 0)),
        ("2025-11-05T06:00:00.123456Z", dt.datetime(2025, 11, 5, 6, 0, 0, 123456)),
        ("2025-11-05 06:00", dt.datetime(2025, 11, 5, 6, 0)),
        ("2025-11-05T06:00:00", dt.datetime(2025, 11, 5, 6, 0)),
    ],
)
def test_timestamps_are_converted_to_utc(text: str, utc: dt.datetime) -> None:
    [row] = _check([customer(1, updated_at=text)])
    assert row["_reasons"] is None
    assert row["updated_at"] == utc.replace(tzinfo=dt.UTC)


def test_reasons_never_include_the_value() -> None:
    secret = "leaky.secret@@example"
    rows = _check(
        [
            customer(1, email=secret),
            customer(2, customer_id="SECRET-ID", status="SECRET-STATUS", updated_at="SECRET-TIME"),
            customer(3, signup_date="1999-99-99", lifetime_value="-77777.77", country_code="ZZZ"),
        ]
    )
    for row in rows:
        reasons = " ".join(row["_reasons"])
        for value in (secret, "SECRET", "1999-99-99", "77777", "ZZZ"):
            assert value not in reasons


def test_a_row_breaking_several_rules_lists_every_reason_in_column_order() -> None:
    assert _reasons(status="deleted", email="n/a", lifetime_value="-1") == [
        "email: does not match the expected pattern",
        "lifetime_value: below the minimum 0",
        "status: not one of active, inactive, closed",
    ]


def test_one_reason_per_column_even_when_several_rules_fail() -> None:
    # not a number: not also checked against the minimum
    assert _reasons(customer_id="-abc") == ["customer_id: not an integer"]


def test_raw_record_re_renders_a_bad_row_as_csv() -> None:
    [row] = _check([customer(1, email="n/a", last_name='Smith, "Jr."\nIII', country_code=None)])
    assert row["_raw_record"] == '1,n/a,Ada,"Smith, ""Jr.""\nIII",,2025-01-05,10.50,active,2025-11-05T06:00:00Z'


def test_missing_nullable_column_is_loaded_as_null() -> None:
    present = [c for c in ALL if c != "country_code"]
    [row] = _check([customer(1)], present=present)
    assert row["_reasons"] is None
    assert row["country_code"] is None
    assert list(row)[: len(ALL)] == ALL


def test_raw_record_of_a_file_without_a_column_has_only_the_present_columns() -> None:
    present = [c for c in ALL if c != "country_code"]
    [row] = _check([customer(1, status="gone")], present=present)
    assert row["_raw_record"] == "1,ada.lovelace1@example.com,Ada,Lovelace,2025-01-05,10.50,gone,2025-11-05T06:00:00Z"
