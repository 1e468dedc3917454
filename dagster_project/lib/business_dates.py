"""The business calendar every daily layer shares: bronze, silver and gold partitions start at the same date."""

from __future__ import annotations

import datetime as dt

# The first business date the platform keeps. Dagster's daily partitions start here, and the webhook inbox
# files an event dated earlier under the date it was received, so no stored event falls outside a partition.
FIRST_BUSINESS_DATE = dt.date(2025, 1, 1)
