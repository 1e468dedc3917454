"""Asset keys of gold dbt models for domains downstream of the warehouse (reverse ETL, ...).

The dbt translator in defs/transform is the one authority on those keys; this is the shared way to ask
it, so that other domains neither import defs/transform themselves nor spell the keys out.
"""

import dagster as dg


def gold_model_key(model: str) -> dg.AssetKey:
    """The asset key the dbt assets give the gold (marts) model `model`, e.g. `gold/customer_segments`.

    Reads the dbt manifest: call it while the definitions load, not at import.
    """
    from dagster_project.defs.transform.assets import model_key  # loaded on use, not at import

    return model_key(model)


def gold_model_columns(model: str) -> dg.TableSchema | None:
    """The column schema the dbt assets give the gold model `model` (from its YAML), if any."""
    from dagster_project.defs.transform.assets import assets_for_model  # loaded on use, not at import

    assets = assets_for_model(model)
    return assets.specs_by_key[gold_model_key(model)].metadata.get("dagster/column_schema")
