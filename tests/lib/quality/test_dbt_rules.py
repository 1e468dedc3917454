"""The dbt model YAML (as the parsed manifest holds it) compiles into gate rules, one rule per data test."""

from __future__ import annotations

from typing import Any

import pytest

from dagster_project.lib.quality import dbt_rules, rules


def _model(name: str, meta: dict | None = None) -> dict[str, Any]:
    return {"resource_type": "model", "name": name, "schema": "gold", "config": {"meta": meta or {}}}


def _test(model: str, name: str, kwargs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "resource_type": "test",
        "name": extra.pop("test_name", f"{name}_{model}_{kwargs.get('column_name', '')}"),
        "attached_node": f"model.p.{model}",
        "test_metadata": {"name": name, "kwargs": {**kwargs, "model": f"{{{{ ref('{model}') }}}}"}},
        "config": {"severity": extra.pop("severity", "error"), "where": extra.pop("where", None)},
        "description": extra.pop("description", ""),
    }


def _manifest(*nodes: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for node in nodes:
        prefix = "model.p." if node["resource_type"] == "model" else "test.p."
        out[prefix + node["name"]] = node
    return {"nodes": out}


def test_every_supported_test_becomes_its_rule():
    query = "select id from {batch} group by id having count(*) > 2"
    manifest = _manifest(
        _model("orders", {"gx_gate": {"sample_columns": ["order_id"]}}),
        _model("ungated"),
        _test("orders", "not_null", {"column_name": "order_id"}),
        _test("orders", "unique", {"column_name": "order_id"}),
        _test("orders", "accepted_values", {"column_name": "status", "values": ["paid", "shipped"]}),
        _test("orders", "matches_regex", {"column_name": "currency", "pattern": "[A-Z]{3}"}),
        _test("orders", "accepted_range", {"column_name": "total", "min_value": 0}),
        _test("orders", "unique_combination_of_columns", {"combination_of_columns": ["a", "b"]}, test_name="ucc"),
        _test("orders", "expression_is_true", {"expression": "paid <= total"}, test_name="expr"),
        _test("orders", "no_unexpected_rows", {"query": query}, test_name="rows", description="at most two per id"),
        _test("orders", "not_null", {"column_name": "note"}, severity="warn"),
        _test("ungated", "not_null", {"column_name": "x"}),
    )
    [gate] = dbt_rules.model_gates(manifest)
    assert (gate.model, gate.relation, gate.gate.name) == ("orders", "gold.orders", "gold_orders")
    assert gate.gate.sample_columns == ("order_id",)
    assert set(gate.gate.expectations) == {
        rules.not_null("order_id"),
        rules.unique("order_id"),
        rules.accepted_values("status", ["paid", "shipped"]),
        rules.matches_regex("currency", "[A-Z]{3}"),
        rules.between("total", min_value=0),
        rules.unique_combination(["a", "b"]),
        rules.unexpected_rows("select * from {batch} where not coalesce((paid <= total), false)", "paid <= total"),
        rules.unexpected_rows(query, "at most two per id"),
    }  # the warn-severity test does not block, so the gate leaves it out
    assert dbt_rules.gated_models(manifest) == ["orders"]


def test_a_gate_without_sample_columns_samples_its_unique_columns():
    manifest = _manifest(
        _model("t", {"gx_gate": True}),
        _test("t", "unique", {"column_name": "id"}),
        _test("t", "not_null", {"column_name": "id"}),
    )
    assert dbt_rules.model_gates(manifest)[0].gate.sample_columns == ("id",)


@pytest.mark.parametrize(
    ("test", "message"),
    [
        (_test("t", "relationships", {"column_name": "id", "to": "ref('u')", "field": "id"}), "no GX translation"),
        (_test("t", "unique", {"column_name": "id"}, where="is_current"), "restricted with `where`"),
    ],
)
def test_a_test_the_gate_cannot_check_fails_loudly(test, message):
    manifest = _manifest(_model("t", {"gx_gate": {"sample_columns": ["id"]}}), test)
    with pytest.raises(ValueError, match=message) as info:
        dbt_rules.model_gates(manifest)
    assert test["name"] in str(info.value)


def test_a_test_restricted_to_the_partition_window_keeps_its_rule_for_the_whole_table():
    # dbt checks the rows of the run's window; the gate checks the same rule on every row.
    manifest = _manifest(
        _model("t", {"gx_gate": {"sample_columns": ["id"]}}),
        _test("t", "unique", {"column_name": "id"}, where="__partition_window__(business_date)"),
        _test(
            "t",
            "no_unexpected_rows",
            {"query": "select id from {batch} group by id having count(*) > 2"},
            test_name="rows",
            description="at most two per id",
            where="__partition_window_keys__(id, business_date) and __partition_window__(business_date)",
        ),
    )
    assert set(dbt_rules.model_gates(manifest)[0].gate.expectations) == {
        rules.unique("id"),
        rules.unexpected_rows("select id from {batch} group by id having count(*) > 2", "at most two per id"),
    }


@pytest.mark.parametrize(
    "where",
    [
        "__partition_window__(business_date) or is_current",
        "is_current and __partition_window__(business_date)",
        "__partition_window__(business_date); select 1",
        "__partition_window__(Business Date)",
    ],
)
def test_a_where_that_changes_the_rule_is_refused_even_beside_the_window(where):
    manifest = _manifest(
        _model("t", {"gx_gate": {"sample_columns": ["id"]}}), _test("t", "unique", {"column_name": "id"}, where=where)
    )
    with pytest.raises(ValueError, match="restricted with `where`"):
        dbt_rules.model_gates(manifest)


def test_an_unexpected_rows_query_must_read_the_batch():
    with pytest.raises(ValueError, match="batch"):
        rules.unexpected_rows("select 1", "nothing to read")


def test_an_exists_in_test_reads_the_lake_table_of_its_source():
    test = _test("orders", "exists_in", {"to": "source('shop', 'orders')", "columns": ["order_id", "day"]})
    test["depends_on"] = {"nodes": ["source.p.shop.orders", "model.p.orders"]}
    test["description"] = "every order is still in bronze"
    manifest = _manifest(_model("orders", {"gx_gate": {"sample_columns": ["order_id"]}}), test)
    manifest["sources"] = {"source.p.shop.orders": {"name": "orders", "schema": "bronze", "identifier": "orders"}}

    [gate] = dbt_rules.model_gates(manifest)

    [rule] = gate.gate.expectations
    assert rule == rules.exists_in(["order_id", "day"], "bronze.orders", "every order is still in bronze")
    assert rule.reads == ("bronze.orders",)
    assert "anti join bronze.orders using (order_id, day)" in (rule.query or "")


def test_an_exists_in_rule_reads_only_a_lake_table_by_plain_names():
    with pytest.raises(ValueError, match="<layer>.<table>"):
        rules.exists_in(["id"], "bronze.orders; drop table x")
    with pytest.raises(ValueError, match="plain column names"):
        rules.exists_in(["id) or (1=1"], "bronze.orders")
