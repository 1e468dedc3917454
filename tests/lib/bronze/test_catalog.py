"""The catalog's description of bronze and quarantine columns is the Delta tables' own schema, and says which
columns hold personal data and what the declaration holds them to."""

import subprocess
import sys

import pyarrow as pa
import pytest

from dagster_project.lib.bronze.catalog import PII_NOTE, bronze_columns, quarantine_columns
from dagster_project.lib.bronze.contract import PARTITION_COLUMN, QUARANTINE_SCHEMA, bronze_schema
from dagster_project.lib.sources.registry import CUSTOMERS, ORDERS, SOURCES


def _as_catalog(schema: pa.Schema) -> list[tuple[str, str, bool]]:
    return [(f.name, str(f.type), f.nullable) for f in schema]


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_bronze_columns_are_the_bronze_tables_columns_with_their_types_and_nullability(name: str) -> None:
    spec = SOURCES[name]
    columns = bronze_columns(spec)
    assert [(c.name, c.type, c.nullable) for c in columns] == _as_catalog(bronze_schema(spec))
    assert all(c.description for c in columns), [c.name for c in columns if not c.description]


def test_quarantine_columns_are_the_quarantine_tables_columns() -> None:
    columns = quarantine_columns()
    assert [(c.name, c.type, c.nullable) for c in columns] == _as_catalog(QUARANTINE_SCHEMA)
    assert all(c.description for c in columns)
    # The raw record is what the partner sent: personal data as much as any declared column.
    assert [c.name for c in columns if c.pii] == ["_raw_record"]


def test_pii_columns_say_so_and_declared_rules_are_shown() -> None:
    columns = {c.name: c for c in bronze_columns(CUSTOMERS)}
    assert {name for name, c in columns.items() if c.pii} == set(CUSTOMERS.pii_columns)
    assert all(PII_NOTE in columns[name].description for name in CUSTOMERS.pii_columns)
    assert PII_NOTE not in columns["customer_id"].description
    assert columns["status"].rules == ("one of active, inactive, closed",)
    assert columns["customer_id"].rules == (">= 1",)
    assert columns["lifetime_value"].type == "decimal128(12, 2)"
    assert not columns[PARTITION_COLUMN].nullable


def test_a_single_key_kept_unique_is_marked_unique() -> None:
    assert [c.name for c in bronze_columns(ORDERS) if c.unique] == ["order_id"]
    assert not [c.name for c in bronze_columns(CUSTOMERS) if c.unique]  # one row per change, not per customer


def test_describing_the_columns_loads_no_arrow() -> None:
    code = (
        "import sys\n"
        "from dagster_project.lib.bronze.catalog import bronze_columns\n"
        "from dagster_project.lib.sources.registry import SOURCES\n"
        "[bronze_columns(s) for s in SOURCES.values()]\n"
        "print('pyarrow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
