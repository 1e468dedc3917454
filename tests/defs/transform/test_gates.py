"""The silver and gold GX gates: one blocking check per model whose dbt YAML declares `gx_gate`, partitioned
like the dbt step that builds the model, failing on bad data with the rule and keys only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from deltalake import write_deltalake

from dagster_project.defs.common.resources import LakeResource
from dagster_project.defs.transform import checks
from dagster_project.defs.transform.assets import assets_for_model

GATED = {
    "stg_acme__customers": "silver/stg_acme__customers",
    "dim_customers": "gold/dim_customers",
    "payout_reconciliation": "gold/payout_reconciliation",
    "customer_segments": "gold/customer_segments",
}


@pytest.fixture(scope="module")
def gates(parsed_manifest: Path) -> dict[str, dg.AssetChecksDefinition]:
    built = checks.defs().asset_checks
    return {next(iter(c.check_specs)).asset_key.to_user_string(): c for c in built}


def test_every_model_declaring_a_gate_gets_a_blocking_check(gates: dict[str, dg.AssetChecksDefinition]) -> None:
    assert sorted(gates) == sorted(GATED.values())
    for key, gate in gates.items():
        [spec] = gate.check_specs
        assert spec.blocking
        assert spec.name == f"gx_{key.split('/')[0]}_gate"


def test_a_gate_is_partitioned_exactly_when_its_model_is(gates: dict[str, dg.AssetChecksDefinition]) -> None:
    for model, key in GATED.items():
        step = assets_for_model(model)
        [spec] = gates[key].check_specs
        assert spec.partitions_def == step.partitions_def, model
    # Today: the incremental silver model is daily, the marts are rebuilt in full.
    assert next(iter(gates["silver/stg_acme__customers"].check_specs)).partitions_def is not None
    assert next(iter(gates["gold/customer_segments"].check_specs)).partitions_def is None


def test_a_gold_gate_fails_bad_segments_naming_the_rule(
    gates: dict[str, dg.AssetChecksDefinition], tmp_path: Path
) -> None:
    with duckdb.connect() as con:
        segments = con.execute(
            """
            select i as customer_id, i % 90 as recency_days, 1 + i % 5 as recency_score,
              1 + i % 5 as frequency_score, 1 + i % 5 as monetary_score,
              case when i = 3 then 'vip' else 'loyal' end as segment, false as is_churn_risk
            from range(1, 51) as t(i)
            """
        ).to_arrow_table()
    write_deltalake(str(tmp_path / "lake" / "gold" / "customer_segments"), segments)
    gate = gates["gold/customer_segments"]
    [result] = gate(dg.build_asset_check_context(), lake=LakeResource(root=str(tmp_path / "lake")))
    assert isinstance(result, dg.AssetCheckResult)
    assert not result.passed
    [failed] = result.metadata["failed"].value
    assert (failed["column"], failed["unexpected_count"], failed["sample"]) == ("segment", 1, [{"customer_id": 3}])
    # The rule it broke, and the validation behind the result: what was read, and every expectation's outcome.
    assert failed["type"] == "expect_column_values_to_be_in_set" and "vip" not in failed["arguments"]["value_set"]
    counts = {k: result.metadata[k].value for k in ("expectations", "expectations_passed", "expectations_failed")}
    assert counts == {"expectations": 12, "expectations_passed": 11, "expectations_failed": 1}
    validation = result.metadata["validation"].value
    assert (validation["suite"], validation["success"]) == (result.metadata["suite"].value, False)
    assert validation["batch"] == {
        "relation": "gold.customer_segments",
        "table_uri": str(tmp_path / "lake" / "gold" / "customer_segments"),
    }
    assert len(validation["results"]) == 12 and failed in validation["results"]


@pytest.mark.slow  # a fresh interpreter loads the gates
def test_the_gates_load_without_great_expectations(parsed_manifest: Path) -> None:
    code = (
        "import sys\n"
        "from dagster_project.defs.transform import checks\n"
        "checks.defs()\n"
        "print('great_expectations' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
