"""Silver and gold gates derived from the dbt model YAML, so each rule is declared once and both dbt and
Great Expectations check it.

A model opts in with `config: {meta: {gx_gate: {sample_columns: [...]}}}` (or `gx_gate: true`, which
samples the columns it declares `unique`). Every data test of severity `error` on such a model becomes a
rule of its gate, read from the parsed manifest (`dbt parse` writes `target/manifest.json`):

| dbt test                                | rule                                                  |
|-----------------------------------------|-------------------------------------------------------|
| not_null, unique                        | the same                                              |
| accepted_values                         | the column's values in the set                        |
| matches_regex (tests/generic)           | non-null values match the pattern as a whole          |
| accepted_range (tests/generic)          | non-null values within [min_value, max_value]         |
| unique_combination_of_columns           | the columns unique together                           |
| expression_is_true                      | rows where the expression is not true                 |
| no_unexpected_rows (tests/generic)      | the rows its query returns, `{batch}` the model       |
| exists_in (tests/generic)               | the columns match a row of `to` (a source or model)   |

A test this module cannot translate (or one restricted with a `config: where` that changes its rule) fails
the derivation with the test's name, rather than leaving a declared rule out of the gate. The one `where` a
gated model's test may take restricts it to the run's partition window (`__partition_window__(column)`,
`__partition_window_keys__(key, column)`, joined by `and`; macros/where_subquery.sql): the rule is the same,
dbt checks it on the rows the run wrote and the gate on the whole table, so every rule is still checked on
every row on every run, once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster_project.lib.quality import rules
from dagster_project.lib.quality.gates import Gate
from dagster_project.lib.quality.rules import Rule

GATE_META_KEY = "gx_gate"
_IDENTIFIER = r"[a-z_][a-z0-9_]*"
_WINDOW_PLACEHOLDER = (
    rf"__partition_window__\(\s*{_IDENTIFIER}\s*\)|__partition_window_keys__\(\s*{_IDENTIFIER}\s*,\s*{_IDENTIFIER}\s*\)"
)
# A `where` made only of partition window placeholders (macros/where_subquery.sql), joined by `and`.
_WINDOW_WHERE = re.compile(rf"\s*(?:{_WINDOW_PLACEHOLDER})(?:\s+(?i:and)\s+(?:{_WINDOW_PLACEHOLDER}))*\s*")


@dataclass(frozen=True)
class ModelGate:
    model: str  # dbt model name
    unique_id: str
    schema: str  # the warehouse schema the model is built in
    gate: Gate

    @property
    def relation(self) -> str:
        return f"{self.schema}.{self.model}"


def load_manifest(path: str | Path) -> dict[str, Any]:
    with Path(path).open(encoding="utf-8") as fh:
        return json.load(fh)


def _gate_meta(node: Mapping[str, Any]) -> object:
    meta = (node.get("config") or {}).get("meta") or node.get("meta") or {}
    return meta.get(GATE_META_KEY)


def gated_models(manifest: Mapping[str, Any]) -> list[str]:
    """Names of the models that declare a GX gate, in name order."""
    return sorted(
        node["name"] for node in manifest["nodes"].values() if node["resource_type"] == "model" and _gate_meta(node)
    )


def model_gates(manifest: Mapping[str, Any]) -> list[ModelGate]:
    """The gate of every model that declares one, in model name order."""
    tests_of: dict[str, list[Mapping[str, Any]]] = {}
    for node in manifest["nodes"].values():
        if node["resource_type"] == "test" and node.get("attached_node") and node.get("test_metadata"):
            tests_of.setdefault(node["attached_node"], []).append(node)
    gates = []
    for unique_id, node in sorted(manifest["nodes"].items(), key=lambda item: item[1]["name"]):
        meta = _gate_meta(node) if node["resource_type"] == "model" else None
        if not meta:
            continue
        tests = sorted(tests_of.get(unique_id, []), key=lambda t: t["name"])
        checks = tuple(
            rule_from_test(t, manifest) for t in tests if (t.get("config") or {}).get("severity", "error") == "error"
        )
        if not checks:
            raise ValueError(f"dbt model {node['name']} declares a GX gate but has no data tests of severity error")
        sample_columns = _sample_columns(node, meta, tests)
        layer = node.get("schema") or node["config"].get("schema")
        gates.append(
            ModelGate(
                model=node["name"],
                unique_id=unique_id,
                schema=layer,
                gate=Gate(f"{layer}_{node['name']}", checks, sample_columns),
            )
        )
    return gates


def _sample_columns(node: Mapping[str, Any], meta: object, tests: list[Mapping[str, Any]]) -> tuple[str, ...]:
    if isinstance(meta, Mapping) and meta.get("sample_columns"):
        return tuple(meta["sample_columns"])
    keys = tuple(t["test_metadata"]["kwargs"]["column_name"] for t in tests if t["test_metadata"]["name"] == "unique")
    if not keys:
        raise ValueError(
            f"dbt model {node['name']}: say which key or token columns a failing gate may show with "
            f"`meta: {{{GATE_META_KEY}: {{sample_columns: [...]}}}}`"
        )
    return keys


def rule_from_test(test: Mapping[str, Any], manifest: Mapping[str, Any] | None = None) -> Rule:
    """The rule a dbt data test node of the manifest declares (`manifest` resolves a test that reads another
    source or model)."""
    name = test["test_metadata"]["name"]
    kwargs = test["test_metadata"].get("kwargs") or {}
    column = kwargs.get("column_name") or test.get("column_name")
    where = (test.get("config") or {}).get("where")
    if where and not is_partition_window_where(where):
        raise ValueError(
            f"dbt test {test['name']} is restricted with `where`, which the GX gate cannot apply; "
            "write the rule as a no_unexpected_rows query instead (a `where` may only name the partition "
            "window: `__partition_window__(column)`)"
        )
    match name:
        case "not_null":
            return rules.not_null(column)
        case "unique":
            return rules.unique(column)
        case "accepted_values":
            return rules.accepted_values(column, kwargs["values"])
        case "matches_regex":
            return rules.matches_regex(column, kwargs["pattern"])
        case "accepted_range":
            return rules.between(column, kwargs.get("min_value"), kwargs.get("max_value"))
        case "unique_combination_of_columns":
            return rules.unique_combination(kwargs["combination_of_columns"])
        case "expression_is_true":
            # The rows tests/generic/expression_is_true.sql selects.
            expression = kwargs["expression"]
            return rules.unexpected_rows(
                f"select * from {rules.BATCH} where not coalesce(({expression}), false)", expression
            )
        case "no_unexpected_rows":
            return rules.unexpected_rows(kwargs["query"], test.get("description") or test["name"])
        case "exists_in":
            return rules.exists_in(
                kwargs["columns"], _other_relation(test, manifest or {}), test.get("description") or None
            )
    raise ValueError(
        f"dbt test {test['name']} ({name}) has no GX translation; add one in lib/quality/dbt_rules.py "
        "or write the rule as a no_unexpected_rows query"
    )


def is_partition_window_where(where: str) -> bool:
    """Whether a test's `where` only restricts it to the run's partition window: the rule stays the same, and
    the gate, which reads the whole table, checks it on every row."""
    return _WINDOW_WHERE.fullmatch(where) is not None


def _other_relation(test: Mapping[str, Any], manifest: Mapping[str, Any]) -> str:
    """The lake table (`<layer>.<table>`) of the one source or model a test reads besides its own model."""
    others = [n for n in (test.get("depends_on") or {}).get("nodes", []) if n != test.get("attached_node")]
    nodes = [(manifest.get("sources") or {}).get(n) or (manifest.get("nodes") or {}).get(n) for n in others]
    if len(nodes) != 1 or nodes[0] is None:
        raise ValueError(f"dbt test {test['name']} must read exactly one source or model besides its own")
    node = nodes[0]
    table = node.get("identifier") or node.get("alias") or node["name"]
    return f"{node['schema']}.{table}"
