"""A code location for the SFTP intake daemon test: the platform's SFTP definitions (every partner feed's
landing, bronze and gate, the intake and quarantine jobs, the inbox sensor) and their resources, built from the
environment as the real code location builds them; the sensor ticks every second instead of every 10."""

import dagster as dg

from dagster_project.defs.common import resources as common_resources
from dagster_project.defs.sftp import assets as sftp_assets
from dagster_project.defs.sftp import resources as sftp_resources


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        sftp_assets.sftp_definitions(sensor_interval_seconds=1), common_resources.defs(), sftp_resources.defs()
    )
