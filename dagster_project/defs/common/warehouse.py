"""The DuckDB warehouse as a resource: the file dbt writes silver and gold into, and the gates and reverse
ETL read. Bound once, from settings, where the dbt assets are defined (defs/transform/assets.py), so the
path a run used shows in the UI."""

from pathlib import Path

import dagster as dg

WAREHOUSE_RESOURCE_KEY = "warehouse"


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file (`path`); readers open it read-only, dbt is its one writer."""

    path: str

    @property
    def file(self) -> Path:
        return Path(self.path)
