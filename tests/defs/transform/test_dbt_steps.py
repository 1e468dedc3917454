"""The dbt steps select and describe exactly what dagster-dbt's `@dbt_assets` (with dbt's own selection engine)
would, from the project's parsed manifest: same assets, specs, checks, op tags and step settings."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster_dbt import DbtProject, dbt_assets
from dagster_dbt.asset_utils import (
    DAGSTER_DBT_MANIFEST_METADATA_KEY,
    DAGSTER_DBT_TRANSLATOR_METADATA_KEY,
)
from dagster_dbt.utils import select_unique_ids

from dagster_project.defs.transform import assets


@pytest.fixture(scope="module")
def built(parsed_manifest: Path) -> dict[str, dg.AssetsDefinition]:
    return {step.op.name: step for step in assets.dbt_assets_definitions()}


@pytest.fixture(scope="module")
def project(built: dict[str, dg.AssetsDefinition]) -> DbtProject:
    """The project the steps were built with (the same object their specs carry)."""
    project, _ = assets.dbt_manifest()
    return project


@pytest.fixture(scope="module")
def manifest(built: dict[str, dg.AssetsDefinition]) -> Mapping[str, Any]:
    """The manifest the steps were built with, not the file as it may be now."""
    _, manifest = assets.dbt_manifest()
    return manifest


def reference_step(project: DbtProject, manifest: Mapping[str, Any], step: assets.DbtStep) -> dg.AssetsDefinition:
    """The step as dagster-dbt's decorator builds it."""

    @dbt_assets(
        manifest=manifest,
        project=project,
        select=step.select,
        exclude=step.exclude,
        name=step.name,
        dagster_dbt_translator=assets.MedallionDbtTranslator(),
        partitions_def=assets.daily_partitions if step.partitioned else None,
        backfill_policy=dg.BackfillPolicy.single_run() if step.partitioned else None,
        pool=None if step.partitioned else assets.LAKE_REBUILD_POOL,
    )
    def _step(context: dg.AssetExecutionContext, dbt: assets.MedallionDbtCliResource):  # noqa: ANN202
        yield from ()

    return _step


def comparable(spec: dg.AssetSpec) -> dg.AssetSpec:
    """The spec without the translator instance and the manifest wrapper, which are per build (checked apart)."""
    metadata = {
        k: v
        for k, v in spec.metadata.items()
        if k not in (DAGSTER_DBT_MANIFEST_METADATA_KEY, DAGSTER_DBT_TRANSLATOR_METADATA_KEY)
    }
    return spec.replace_attributes(metadata=metadata)


def steps(manifest: Mapping[str, Any]) -> list[assets.DbtStep]:
    return assets.dbt_steps(manifest)


def test_the_selection_is_dbts(project: DbtProject, manifest: Mapping[str, Any]) -> None:
    selections = [(s.select, s.exclude) for s in steps(manifest)]
    # the parts of the syntax the steps use, alone and together
    selections += [("path:models/staging", None), ("path:models/marts", "path:models/marts/customers")]
    for select, exclude in selections:
        expected = select_unique_ids(select, exclude or "", "", project, manifest)
        assert assets.dbt_select(manifest, select, exclude) == set(expected), (select, exclude)


def test_a_selection_method_not_evaluated_here_fails(manifest: Mapping[str, Any]) -> None:
    with pytest.raises(ValueError, match="tag"):
        assets.dbt_select(manifest, "tag:nightly", None)


def test_each_step_is_what_dbt_assets_builds(
    built: dict[str, dg.AssetsDefinition], project: DbtProject, manifest: Mapping[str, Any]
) -> None:
    assert set(built) == {s.name for s in steps(manifest)}
    for step in steps(manifest):
        ours, reference = built[step.name], reference_step(project, manifest, step)

        assert ours.keys == reference.keys, step.name
        for key in reference.keys:
            ours_spec, reference_spec = ours.specs_by_key[key], reference.specs_by_key[key]
            assert comparable(ours_spec) == comparable(reference_spec), key
            assert type(ours_spec.metadata[DAGSTER_DBT_TRANSLATOR_METADATA_KEY]) is assets.MedallionDbtTranslator
            assert ours_spec.metadata[DAGSTER_DBT_MANIFEST_METADATA_KEY].manifest is not None
        # dagster-dbt's tests are unpartitioned checks; a daily step's are checks of each day, as its models are.
        assert {c.key: c for c in ours.check_specs} == {
            c.key: c._replace(partitions_def=reference.partitions_def) for c in reference.check_specs
        }, step.name
        assert ours.op.tags == reference.op.tags, step.name
        assert ours.can_subset == reference.can_subset
        assert ours.partitions_def == reference.partitions_def
        assert ours.backfill_policy == reference.backfill_policy
        assert ours.op.pool == reference.op.pool
        assert ours.op.retry_policy == reference.op.retry_policy
        assert ours.required_resource_keys == reference.required_resource_keys
        assert ours.asset_deps == reference.asset_deps
        assert set(ours.node_keys_by_output_name) == set(reference.node_keys_by_output_name)
