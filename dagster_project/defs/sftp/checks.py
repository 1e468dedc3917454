import functools

import dagster as dg

from dagster_project.defs.common.bronze import build_bronze_gate
from dagster_project.lib.quality import gates
from dagster_project.lib.sources.registry import FEEDS

defs = dg.Definitions(
    asset_checks=[
        build_bronze_gate(
            spec.name,
            functools.partial(gates.bronze_gate, spec),
            description="Great Expectations: columns, key and lineage not null, accepted values, "
            "row count = rows received - rows quarantined.",
        )
        for spec in FEEDS.values()
    ]
)
