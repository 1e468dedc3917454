"""Silver and gold: the dbt project as Dagster assets (definitions live in `assets.py`)."""
