"""The bronze gate of payment events, until payment events are read through the one bronze engine.

Its rules are `bronze_gate`'s, derived from the `payment_events` source declaration (event id unique and
not null, currency pattern, amounts not negative, lineage not null, row count).
"""

from __future__ import annotations

from dagster_project.lib.quality.gates import Gate, bronze_gate


def bronze_payment_events(expected_rows: int) -> Gate:
    """One bronze partition of webhook events: `expected_rows` is the events received minus those quarantined."""
    from dagster_project.lib.sources.registry import PAYMENT_EVENTS

    return bronze_gate(PAYMENT_EVENTS, expected_rows)
