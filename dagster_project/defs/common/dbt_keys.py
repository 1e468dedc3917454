"""Asset keys of dbt models for domains downstream of the warehouse (reverse ETL, ...).

The dbt translator in defs/transform is the one authority on those keys; this is the shared way to ask
it, so that other domains neither import defs/transform themselves nor spell the keys out.
"""

import dagster as dg
from dagster_dbt import get_asset_key_for_model


def dbt_model_key(model: str) -> dg.AssetKey:
    """The asset key the dbt assets give `model` (e.g. `gold/customer_segments`)."""
    from dagster_project.defs.transform.assets import dbt_gold, dbt_silver  # loaded on use, not at import

    return get_asset_key_for_model([dbt_silver, dbt_gold], model)
