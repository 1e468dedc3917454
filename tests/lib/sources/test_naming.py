"""The partner file-name contract: parse what is valid, say which rule an invalid name breaks."""

from __future__ import annotations

import dataclasses

import pytest

from dagster_project.lib.sources.naming import NamingError, ParsedName, is_temporary, parse_file_name
from dagster_project.lib.sources.registry import CUSTOMERS
from dagster_project.lib.sources.spec import PartnerFiles

VALID = "acme_customers_2025-11-05_seq-00023_crc32-1A2B3C4D.csv"
CONTRACT = "acme_customers_<YYYY-MM-DD>_seq-<5 digits>_crc32-<8 hex>.csv"


def test_valid_name_is_parsed_into_its_parts() -> None:
    assert parse_file_name(VALID) == ParsedName(
        file_name=VALID, source=CUSTOMERS, business_date="2025-11-05", sequence=23, crc32="1A2B3C4D"
    )


def test_leap_day_is_a_calendar_date() -> None:
    assert parse_file_name("acme_customers_2024-02-29_seq-00001_crc32-1A2B3C4D.csv").business_date == "2024-02-29"


def test_lowercase_crc_is_accepted_and_normalised_to_upper_case() -> None:
    name = "acme_customers_2025-11-05_seq-00001_crc32-1a2b3c4d.csv"
    parsed = parse_file_name(name)
    assert parsed.crc32 == "1A2B3C4D"
    assert parsed.file_name == name  # the name itself is kept as received


def test_unknown_prefix_is_refused_with_the_known_prefixes() -> None:
    name = "acme_orders_2025-11-05_seq-00001_crc32-1A2B3C4D.csv"
    with pytest.raises(NamingError) as err:
        parse_file_name(name)
    known = "acme_consents_*, acme_customers_*, psp_payouts_*"
    assert str(err.value) == f"{name}: unknown feed; expected a name starting with one of {known}"


@pytest.mark.parametrize("date", ["2025-02-30", "2025-13-01", "2025-00-10", "2023-02-29"])
def test_impossible_business_date_is_refused(date: str) -> None:
    name = f"acme_customers_{date}_seq-00001_crc32-1A2B3C4D.csv"
    with pytest.raises(NamingError) as err:
        parse_file_name(name)
    assert str(err.value) == f"{name}: business date {date} is not a calendar date"


@pytest.mark.parametrize(
    "name",
    [
        "acme_customers_2025-11-05_seq-1_crc32-1A2B3C4D.csv",
        "acme_customers_2025-11-05_seq-0001_crc32-1A2B3C4D.csv",
        "acme_customers_2025-11-05_seq-000001_crc32-1A2B3C4D.csv",
    ],
)
def test_sequence_of_the_wrong_width_is_refused(name: str) -> None:
    with pytest.raises(NamingError) as err:
        parse_file_name(name)
    assert str(err.value) == f"{name}: does not follow the naming contract {CONTRACT}"


@pytest.mark.parametrize(
    "name",
    [
        "acme_customers_2025-11-05_seq-00001_crc32-1A2B3C4D.txt",
        "acme_customers_2025-11-05_seq-00001_crc32-1A2B3C4D.CSV",
        "acme_customers_2025-11-05_seq-00001_crc32-1A2B3C4D",
        "acme_customers_2025-11-05_seq-00001_crc32-1A2B3C4D.csv.part",
    ],
)
def test_wrong_extension_is_refused(name: str) -> None:
    with pytest.raises(NamingError, match="does not follow the naming contract"):
        parse_file_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "acme_customers_2025-11-05_seq-00001_crc32-1A2B3C.csv",
        "acme_customers_2025-11-05_seq-00001_crc32-XYZ12345.csv",
        "acme_customers_2025-11-05_seq-00001.csv",
        "acme_customers_2025-11-05_crc32-1A2B3C4D_seq-00001.csv",
    ],
)
def test_missing_or_malformed_crc_is_refused(name: str) -> None:
    with pytest.raises(NamingError, match="does not follow the naming contract"):
        parse_file_name(name)


def test_name_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(NamingError, match="does not follow the naming contract"):
        parse_file_name(VALID + "\n")


def test_sequence_in_non_ascii_digits_is_refused() -> None:
    name = "acme_customers_2025-11-05_seq-\u0660\u0660\u0660\u0660\u0661_crc32-1A2B3C4D.csv"
    with pytest.raises(NamingError, match="does not follow the naming contract"):
        parse_file_name(name)


def test_sources_can_be_passed_explicitly() -> None:
    other = dataclasses.replace(CUSTOMERS, name="orders", reader=PartnerFiles(system="shop", entity="orders"))
    parsed = parse_file_name("shop_orders_2025-11-05_seq-00002_crc32-0000FFFF.csv", [other])
    assert (parsed.source, parsed.sequence, parsed.crc32) == (other, 2, "0000FFFF")
    with pytest.raises(NamingError, match="expected a name starting with one of shop_orders_"):
        parse_file_name(VALID, [other])


@pytest.mark.parametrize(
    "name",
    [
        VALID + ".part",
        VALID + ".PART",
        VALID + ".tmp",
        VALID + ".filepart",
        VALID + ".partial",
        VALID + ".upload",
        VALID + ".crdownload",
        "." + VALID,
        "~" + VALID,
    ],
)
def test_upload_in_progress_names_are_temporary(name: str) -> None:
    assert is_temporary(name) is True


@pytest.mark.parametrize("name", [VALID, "acme_customers_part.csv", "report.tmp.csv", "notes.txt"])
def test_ordinary_names_are_not_temporary(name: str) -> None:
    assert is_temporary(name) is False
