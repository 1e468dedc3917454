from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from dagster_project import settings
from dagster_project.lib.intake.inbox import Inbox


class InboxResource(dg.ConfigurableResource):
    """The webhook inbox the receiver commits verified deliveries to. `url` overrides
    MEDALLION_WEBHOOK_INBOX_URL (SQLite by default, PostgreSQL in production); it is only read here."""

    url: str | None = None

    def resolved_url(self) -> str:
        return self.url or settings.webhook_inbox_url()

    @contextmanager
    def open(self) -> Iterator[Inbox]:
        with Inbox(self.resolved_url()) as inbox:
            yield inbox


defs = dg.Definitions(resources={"inbox": InboxResource()})
