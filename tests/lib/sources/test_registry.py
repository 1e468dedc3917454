"""The source registry, and the file-name contract derived from partner file declarations."""

from __future__ import annotations

import pytest

from dagster_project.lib.sources.registry import (
    CUSTOMERS,
    ORDERS,
    PAYMENT_EVENTS,
    SHOP_EVENTS,
    SOURCES,
    pii_columns,
    source_for_file,
    source_for_provider,
)
from dagster_project.lib.sources.spec import OnSchemaDrift, PartnerFiles, SourceSpec


def test_sources_are_registered_under_their_table_names() -> None:
    assert list(SOURCES) == ["customers", "psp_payouts", "consents", "orders", "payment_events", "shop_events"]
    assert all(name == spec.name for name, spec in SOURCES.items())


def test_every_key_column_is_declared_and_required() -> None:
    for spec in SOURCES.values():
        for key in spec.key:
            assert not spec.column(key).nullable, f"{spec.name}.{key}"


def test_each_webhook_provider_belongs_to_one_source() -> None:
    assert source_for_provider("stripe") is PAYMENT_EVENTS
    assert source_for_provider("shop") is SHOP_EVENTS
    assert source_for_provider("standard") is None


def test_lineage_source_names_the_intake() -> None:
    assert (CUSTOMERS.lineage_source, ORDERS.lineage_source, PAYMENT_EVENTS.lineage_source) == (
        "sftp",
        "airbyte:shop/orders",
        "webhook:stripe",
    )


def test_pii_columns_come_from_every_declaration() -> None:
    assert {"email", "first_name", "last_name", "body"} <= pii_columns()
    assert "customer_id" not in pii_columns()


def test_only_partner_file_sources_have_a_file_naming_contract() -> None:
    with pytest.raises(TypeError, match="orders is read from airbyte_records"):
        _ = ORDERS.files


def test_customers_declares_its_columns_in_file_order() -> None:
    assert CUSTOMERS.column_names == (
        "customer_id",
        "email",
        "first_name",
        "last_name",
        "country_code",
        "signup_date",
        "lifetime_value",
        "status",
        "updated_at",
    )
    assert CUSTOMERS.key == ("customer_id",)
    assert CUSTOMERS.schema_version == 1


def test_customers_fails_on_schema_drift_by_default() -> None:
    assert CUSTOMERS.on_unknown_column is OnSchemaDrift.FAIL
    assert CUSTOMERS.on_missing_column is OnSchemaDrift.FAIL


def test_customers_marks_personal_data_columns_as_pii() -> None:
    assert [c.name for c in CUSTOMERS.columns if c.pii] == ["email", "first_name", "last_name"]


def test_required_columns_are_not_nullable() -> None:
    required = [c.name for c in CUSTOMERS.columns if not c.nullable]
    assert required == ["customer_id", "email", "signup_date", "status", "updated_at"]


def test_column_lookup_by_name() -> None:
    column = CUSTOMERS.column("lifetime_value")
    assert (column.type, column.precision, column.scale, column.min_value) == ("decimal", 12, 2, 0)


def test_column_lookup_of_an_unknown_name_raises_key_error() -> None:
    with pytest.raises(KeyError, match="nickname"):
        CUSTOMERS.column("nickname")


def test_file_prefix_is_system_and_entity() -> None:
    assert CUSTOMERS.files.file_prefix == "acme_customers_"


def test_file_name_pads_the_sequence_and_upper_cases_the_crc() -> None:
    name = CUSTOMERS.files.file_name("2025-11-05", 23, "1a2b3c4d")
    assert name == "acme_customers_2025-11-05_seq-00023_crc32-1A2B3C4D.csv"


def test_generated_file_name_matches_the_regex_with_its_parts() -> None:
    match = CUSTOMERS.files.file_name_regex.match(CUSTOMERS.files.file_name("2025-11-05", 7, "00ABCDEF"))
    assert match is not None
    assert match.groupdict() == {"business_date": "2025-11-05", "sequence": "00007", "crc32": "00ABCDEF"}


@pytest.mark.parametrize(
    "name",
    [
        "acme_customers_2025-11-05_seq-0001_crc32-1A2B3C4D.csv",  # 4-digit sequence
        "acme_customers_2025-11-05_seq-000001_crc32-1A2B3C4D.csv",  # 6-digit sequence
        "acme_customers_2025-11-05_seq-00001_crc32-1A2B3C4.csv",  # 7 hex digits
        "acme_customers_2025-11-05_seq-00001_crc32-1A2B3C4G.csv",  # not hex
        "acme_customers_2025-11-05_seq-00001_crc32-1A2B3C4D.txt",  # other extension
        "acme_customers_2025-11-05_seq-00001_crc32-1A2B3C4D.csv.gz",  # suffix after the extension
        "acme_customers_2025-11-05_seq-00001_crc32-1A2B3C4Dxcsv",  # the dot is literal
        "acme_customers_20251105_seq-00001_crc32-1A2B3C4D.csv",  # compact date
        "acme_customers_2025-11-05_seq-00001_crc32-1A2B3C4D.csv\n",  # trailing newline
        "acme_customers_2025-11-05_seq-\u0660\u0660\u0660\u0660\u0661_crc32-1A2B3C4D.csv",  # Arabic-Indic digits
        "acme_customers_\uff12\uff10\uff12\uff15-11-05_seq-00001_crc32-1A2B3C4D.csv",  # full-width digits
    ],
)
def test_file_name_regex_refuses_names_outside_the_contract(name: str) -> None:
    assert CUSTOMERS.files.file_name_regex.match(name) is None


def test_file_name_follows_the_declared_system_entity_and_extension() -> None:
    spec = SourceSpec(
        name="payouts",
        reader=PartnerFiles(system="psp", entity="payouts", extension="tsv"),
        dbt_source="psp",
        columns=CUSTOMERS.columns,
        key=("customer_id",),
        schema_version=1,
        description="test feed",
    ).files
    assert spec.file_name("2025-11-05", 1, "ABCDEF01") == "psp_payouts_2025-11-05_seq-00001_crc32-ABCDEF01.tsv"
    assert spec.file_name_regex.match("psp_payouts_2025-11-05_seq-00001_crc32-ABCDEF01.tsv") is not None
    assert spec.file_name_regex.match("psp_payouts_2025-11-05_seq-00001_crc32-ABCDEF01.csv") is None


def test_source_for_file_finds_the_feed_by_prefix() -> None:
    assert source_for_file("acme_customers_2025-11-05_seq-00001_crc32-1A2B3C4D.csv") is CUSTOMERS
    # the prefix is enough: the full contract is checked by naming.parse_file_name
    assert source_for_file("acme_customers_garbage.csv") is CUSTOMERS


@pytest.mark.parametrize(
    "name",
    ["acme_orders_2025-11-05_seq-00001_crc32-1A2B3C4D.csv", "xacme_customers_2025-11-05.csv", "acme_customers", ""],
)
def test_source_for_file_returns_none_for_other_names(name: str) -> None:
    assert source_for_file(name) is None
