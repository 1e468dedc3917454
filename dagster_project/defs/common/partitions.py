import dagster as dg

from dagster_project import settings

# Business dates. One definition shared by every daily layer so partitions line up across bronze,
# silver and gold; end_offset=1 makes today's date available as soon as a file for it arrives.
# The start (MEDALLION_FIRST_BUSINESS_DATE) is read once, when this module is imported, which is when the code
# location loads: the partitions are part of the definitions' shape, like the asset keys, so they cannot
# change within a process. A test that needs another start loads the definitions in a child process.
daily_partitions = dg.DailyPartitionsDefinition(start_date=settings.first_business_date().isoformat(), end_offset=1)

# Full rebuilds of unpartitioned dbt models take one slot of this pool (limit 1 in dagster.yaml): two at once
# would compute the same tables twice and one would lose the commit race. Partitioned steps, gates and readers
# of the lake take no slot: Delta's optimistic concurrency lets them run side by side.
LAKE_REBUILD_POOL = "lake_rebuild"
