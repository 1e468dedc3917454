"""Quality rules as plain data: what a gate checks, declared without importing Great Expectations.

A `Rule` is one check on a table: a column not null, unique, in a set of values, matching a pattern or in
a range; the table's columns or row count; or an SQL query whose rows are the violations, which may read
other tables of the lake (its `reads`, e.g. the bronze table a silver key must still exist in). Rules come from
declarations (a source's columns for bronze, the dbt model YAML for silver and gold, see `dbt_rules`);
`gx_runner` compiles them into GX expectations only when a gate runs, so declaring gates costs nothing
when the code location loads.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

RuleKind = Literal[
    "not_null",
    "unique",
    "unique_combination",
    "accepted_values",
    "matches_regex",
    "between",
    "columns_present",
    "row_count",
    "unexpected_rows",
]

# The placeholder an unexpected-rows query uses for the table under test (GX's own `{batch}`).
BATCH = "{batch}"
# A table of the lake a query may read besides the batch: `<layer>.<table>`, as the lake's views name it.
_LAKE_RELATION = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")
_COLUMN = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class Rule:
    kind: RuleKind
    column: str | None = None
    columns: tuple[str, ...] = ()  # columns_present, unique_combination
    values: tuple[object, ...] = ()  # accepted_values
    pattern: str | None = None  # matches_regex: RE2, the whole value must match
    min_value: float | None = None  # between, inclusive
    max_value: float | None = None
    count: int | None = None  # row_count
    query: str | None = None  # unexpected_rows: rows that break the rule, `{batch}` is the table
    description: str | None = None  # how a failure is named when the rule has no column to name it by
    reads: tuple[str, ...] = ()  # unexpected_rows: lake tables `<layer>.<table>` the query reads by that name


def not_null(column: str) -> Rule:
    return Rule("not_null", column=column)


def unique(column: str) -> Rule:
    return Rule("unique", column=column)


def unique_combination(columns: Sequence[str]) -> Rule:
    return Rule("unique_combination", columns=tuple(columns))


def accepted_values(column: str, values: Sequence[object]) -> Rule:
    return Rule("accepted_values", column=column, values=tuple(values))


def matches_regex(column: str, pattern: str) -> Rule:
    """Non-null values of `column` match `pattern` as a whole (anchors are implied, as in dbt's test)."""
    return Rule("matches_regex", column=column, pattern=pattern)


def between(column: str, min_value: float | None = None, max_value: float | None = None) -> Rule:
    if min_value is None and max_value is None:
        raise ValueError(f"a range rule on {column} needs a min_value, a max_value or both")
    return Rule("between", column=column, min_value=min_value, max_value=max_value)


def columns_present(columns: Sequence[str]) -> Rule:
    """Every one of `columns` exists; other columns may exist too."""
    return Rule("columns_present", columns=tuple(columns))


def row_count(count: int) -> Rule:
    return Rule("row_count", count=int(count))


def unexpected_rows(query: str, description: str) -> Rule:
    """The rows `query` returns break the rule; `{batch}` in it stands for the table under test."""
    if BATCH not in query:
        raise ValueError(f"unexpected-rows query for {description!r} must read the table as {BATCH}")
    return Rule("unexpected_rows", query=query, description=description)


def exists_in(columns: Sequence[str], relation: str, description: str | None = None) -> Rule:
    """Every row's `columns` (all non-null) match a row of the lake table `relation` (`<layer>.<table>`, with
    the same column names): e.g. a silver key whose records all left bronze breaks it. The same query as the
    dbt test `exists_in` (tests/generic/exists_in.sql)."""
    columns = tuple(columns)
    if not columns or not all(_COLUMN.match(c) for c in columns):
        raise ValueError(f"exists_in needs plain column names, got {list(columns)}")
    if not _LAKE_RELATION.match(relation):
        raise ValueError(f"exists_in reads a lake table named <layer>.<table>, got {relation!r}")
    names = ", ".join(columns)
    # Only the key columns: a query GX fetches rows of reads no other column of the model.
    query = (
        f"select {names} from {BATCH} anti join {relation} using ({names}) "
        f"where {' and '.join(f'{c} is not null' for c in columns)}"
    )
    return Rule(
        "unexpected_rows",
        query=query,
        description=description or f"({names}) exists in {relation}",
        reads=(relation,),
    )


def full_match(pattern: str) -> str:
    """`pattern` anchored at both ends: the regex a search-semantics matcher needs for a whole-value match."""
    return f"^(?:{pattern})$"
