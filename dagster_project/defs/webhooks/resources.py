from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from dagster_project import settings
from dagster_project.defs.common.resources import by_reference_if_configured

if TYPE_CHECKING:  # SQLAlchemy loads where the inbox is opened, not with the code location
    from dagster_project.lib.intake.inbox import Inbox


class InboxResource(dg.ConfigurableResource):
    """The webhook inbox the receiver commits verified deliveries to (SQLite embedded, PostgreSQL in production)."""

    url: str = Field(
        description="SQLAlchemy URL of the inbox. One with a password is given as dg.EnvVar "
        "(MEDALLION_WEBHOOK_INBOX_URL), so it is never shown."
    )

    @contextmanager
    def open(self) -> Iterator[Inbox]:
        from dagster_project.lib.intake.inbox import Inbox

        with Inbox(self.url) as inbox:
            yield inbox


@dg.definitions
def defs() -> dg.Definitions:
    url = by_reference_if_configured(settings.WEBHOOK_INBOX_URL, settings.webhook_inbox_default_url())
    return dg.Definitions(resources={"inbox": InboxResource(url=url)})
