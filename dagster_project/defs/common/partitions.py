import dagster as dg

from dagster_project.lib.business_dates import FIRST_BUSINESS_DATE

# Business dates. One definition shared by every daily layer so partitions line up across bronze,
# silver and gold; end_offset=1 makes today's date available as soon as a file for it arrives.
daily_partitions = dg.DailyPartitionsDefinition(start_date=FIRST_BUSINESS_DATE.isoformat(), end_offset=1)

# One DuckDB writer at a time: dbt runs and gates that open the warehouse share this pool (limit 1 in
# dagster.yaml), so concurrent runs queue instead of failing on the DuckDB file lock.
WAREHOUSE_POOL = "warehouse"
