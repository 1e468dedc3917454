"""Quality gates: a named list of rules and the columns a failure may show.

Every rule of a gate comes from a declaration, never written here by hand: a bronze gate from its
source's declaration (`bronze_gate`), a silver or gold gate from the dbt tests of its model's YAML
(`dbt_rules.model_gates`), so dbt tests the same rules that GX gates. Gates are plain data: `gx_runner`
turns them into Great Expectations suites only when one runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dagster_project.lib.quality import rules
from dagster_project.lib.quality.rules import Rule


@dataclass(frozen=True)
class Gate:
    name: str
    expectations: tuple[Rule, ...]  # what GX checks, as rules; `gx_runner` compiles them when the gate runs
    sample_columns: tuple[str, ...]  # keys and tokens only: what a failure may show


class ColumnDeclaration(Protocol):
    name: str
    type: str
    nullable: bool
    pattern: str | None
    min_value: float | None
    max_value: float | None
    allowed: tuple[str, ...] | None


class SourceDeclaration(Protocol):
    """What a gate reads from a source declaration (`lib.sources.spec.SourceSpec`)."""

    name: str
    key: tuple[str, ...]

    @property
    def columns(self) -> tuple[ColumnDeclaration, ...]: ...

    @property
    def column_names(self) -> tuple[str, ...]: ...


_NUMERIC_TYPES = frozenset({"int64", "decimal"})


def bronze_gate(spec: SourceDeclaration, expected_rows: int) -> Gate:
    """One bronze partition of a source, derived from its declaration.

    Every declared, partition and lineage column present; the key, every non-nullable declared column,
    the partition and the lineage columns not null; the key unique when the source keeps one row per key
    (`unique_key`); declared accepted values, patterns (on text columns) and ranges (on numeric columns);
    and `expected_rows` rows (received for the partition minus quarantined and dropped). The edge contract
    quarantines rows that break these rules, so a failure here means bronze holds what the contract refused.
    """
    # Imported here: lib.bronze.contract pulls in pyarrow, polars and pandera.
    from dagster_project.lib.bronze.contract import LINEAGE_COLUMNS, PARTITION_COLUMN

    not_null = list(dict.fromkeys([*spec.key, *(c.name for c in spec.columns if not c.nullable)]))
    checks: list[Rule] = [
        rules.columns_present([*spec.column_names, PARTITION_COLUMN, *LINEAGE_COLUMNS]),
        *(rules.not_null(c) for c in (*not_null, PARTITION_COLUMN, *LINEAGE_COLUMNS)),
    ]
    if getattr(spec, "unique_key", False):
        checks.append(rules.unique(spec.key[0]) if len(spec.key) == 1 else rules.unique_combination(spec.key))
    for c in spec.columns:
        if c.allowed is not None:
            checks.append(rules.accepted_values(c.name, c.allowed))
        if c.pattern is not None and c.type == "string":
            checks.append(rules.matches_regex(c.name, c.pattern))
        if (c.min_value is not None or c.max_value is not None) and c.type in _NUMERIC_TYPES:
            checks.append(rules.between(c.name, c.min_value, c.max_value))
    checks.append(rules.row_count(expected_rows))
    return Gate(f"bronze_{spec.name}", tuple(checks), sample_columns=(*spec.key, "_source_file", "_source_row"))
