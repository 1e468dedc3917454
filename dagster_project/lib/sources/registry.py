"""The source registry: every source of the lakehouse declared once.

A declaration names the columns with their types, rules and PII flags, the business key, the schema
version, the owners, the dbt source that reads it and how it is read (`spec.py`). Dagster assets, checks,
jobs and sensor routing, the bronze engine's reader, the dbt plugin's schemas, the PII lists and the webhook
receiver's providers all derive from `SOURCES`. Adding a source is a declaration here, a reader only if
its input kind is new (`lib/bronze/readers/`), and its dbt staging model (docs/adding-a-source.md).
"""

from __future__ import annotations

from dagster_project.lib.sources.spec import (
    AirbyteStream,
    Column,
    DailyDeadline,
    MaxAge,
    OnErasure,
    PartnerFiles,
    SourceSpec,
    WebhookEvents,
)

EMAIL_PATTERN = r"^[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}$"

CUSTOMERS = SourceSpec(
    name="customers",
    reader=PartnerFiles(system="acme", entity="customers"),
    dbt_source="acme",
    description="Daily customer export from the CRM partner, one row per customer change.",
    schema_version=1,
    key=("customer_id",),
    owners=("team:crm-data",),
    freshness=DailyDeadline("08:00", days="mon-fri"),  # the CRM exports each business day before 08:00
    columns=(
        Column(
            "customer_id", "int64", nullable=False, min_value=1, description="CRM customer id", identifies="customer_id"
        ),
        Column("email", "string", nullable=False, pattern=EMAIL_PATTERN, pii=True, identifies="email"),
        Column("first_name", "string", pii=True),
        Column("last_name", "string", pii=True),
        Column("country_code", "string", pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2"),
        Column("signup_date", "date", nullable=False, description="When the customer signed up at the CRM"),
        Column(
            "lifetime_value",
            "decimal",
            precision=12,
            scale=2,
            min_value=0,
            description="Lifetime value the CRM computes, in the customer's currency",
        ),
        Column(
            "status",
            "string",
            nullable=False,
            allowed=("active", "inactive", "closed"),
            description="Account status at the CRM",
        ),
        Column("updated_at", "timestamp", nullable=False, description="Change time at the CRM, ISO 8601"),
    ),
)

PSP_PAYOUTS = SourceSpec(
    name="psp_payouts",
    reader=PartnerFiles(system="psp", entity="payouts"),
    dbt_source="psp",
    description="Daily payout (settlement) file from the payment service provider, one row per charge in a payout.",
    schema_version=1,
    key=("payout_id", "charge_id"),
    owners=("team:payments-data",),
    freshness=DailyDeadline("10:00", days="mon-fri"),  # payouts settle on banking days
    columns=(
        Column("payout_id", "string", nullable=False, pattern=r"^po_[A-Za-z0-9]+$", description="PSP payout id"),
        Column("charge_id", "string", nullable=False, pattern=r"^ch_[A-Za-z0-9]+$", description="PSP charge id"),
        Column("gross", "decimal", nullable=False, min_value=0, description="Amount captured for the charge"),
        Column("fee", "decimal", nullable=False, min_value=0, description="PSP fee deducted for the charge"),
        Column("net", "decimal", nullable=False, description="Paid out for the charge: gross - refunds - fee"),
        Column("currency", "string", nullable=False, pattern=r"^[A-Z]{3}$", description="ISO 4217, upper case"),
        Column("settled_at", "timestamp", nullable=False, description="Settlement time at the PSP, ISO 8601"),
    ),
)

CONSENTS = SourceSpec(
    name="consents",
    reader=PartnerFiles(system="acme", entity="consents"),
    dbt_source="acme",
    description="Daily marketing-consent export from the CRM partner, one row per consent change.",
    schema_version=1,
    key=("customer_id", "channel"),
    owners=("team:crm-data",),
    freshness=DailyDeadline("08:00", days="mon-fri"),
    columns=(
        Column(
            "customer_id", "int64", nullable=False, min_value=1, description="CRM customer id", identifies="customer_id"
        ),
        Column(
            "channel",
            "string",
            nullable=False,
            allowed=("email", "sms", "phone", "post"),
            description="Marketing channel the consent is for",
        ),
        Column(
            "consent_status",
            "string",
            nullable=False,
            allowed=("granted", "withdrawn"),
            description="Whether the customer granted or withdrew consent",
        ),
        Column("changed_at", "timestamp", nullable=False, description="When the customer changed it, ISO 8601"),
    ),
)

ORDERS = SourceSpec(
    name="orders",
    reader=AirbyteStream(
        connection="shop", destination_dir="shop_orders", stream="orders", partition_column="order_date"
    ),
    dbt_source="shop",
    description="Shop orders synced by Airbyte, one row per order (its latest delivered state).",
    schema_version=1,
    key=("order_id",),
    unique_key=True,
    owners=("team:commerce-data",),
    # Synced hourly; a quiet night may bring no new orders, a day without any means the sync stopped.
    freshness=MaxAge(hours=24, warn_hours=6),
    # An erased customer's orders stay (they are the shop's books) as guest orders.
    on_erasure=OnErasure.REDACT,
    columns=(
        Column("order_id", "int64", nullable=False, min_value=1, description="Shop order id"),
        Column(
            "customer_id",
            "int64",
            min_value=1,
            description="CRM customer id; null for a guest order",
            identifies="customer_id",
        ),
        Column("order_date", "date", nullable=False, description="Business date of the order (shop time zone)"),
        Column("ordered_at", "timestamp", nullable=False, description="When the order was placed, ISO 8601"),
        Column(
            "total_amount",
            "decimal",
            nullable=False,
            precision=12,
            scale=2,
            min_value=0,
            description="Order total, in major units of the currency",
        ),
        Column("currency", "string", nullable=False, pattern=r"^[A-Z]{3}$", description="ISO 4217, upper case"),
        Column(
            "status",
            "string",
            nullable=False,
            allowed=("placed", "paid", "shipped", "cancelled"),
            description="Order status at the shop",
        ),
    ),
)

PAYMENT_EVENTS = SourceSpec(
    name="payment_events",
    reader=WebhookEvents(provider="stripe", scheme="stripe", payload="stripe"),
    dbt_source="psp",
    description="PSP webhook events, one row per event id, partitioned by UTC event date.",
    schema_version=1,
    key=("event_id",),
    unique_key=True,
    owners=("team:payments-data",),
    # The PSP sends charges around the clock; a day without a single event means deliveries stopped.
    freshness=MaxAge(hours=24, warn_hours=12),
    on_erasure=OnErasure.REDACT,  # the event stays (revenue does not change); the subject's address goes
    columns=(
        Column("event_id", "string", nullable=False, description="PSP event id"),
        Column("event_type", "string", nullable=False, description="e.g. charge.succeeded, payout.paid"),
        Column("event_created_at", "timestamp", nullable=False, description="When the PSP created the event"),
        Column("livemode", "boolean", description="The body's livemode: false for the PSP's test mode"),
        Column("object_type", "string", nullable=False, description="data.object.object"),
        Column("charge_id", "string", description="data.object.id of a charge, else data.object.charge"),
        Column("payout_id", "string", description="data.object.id of a payout, else data.object.payout"),
        Column("amount_minor", "int64", min_value=0, description="data.object.amount, minor units"),
        Column("amount_refunded_minor", "int64", min_value=0, description="data.object.amount_refunded"),
        Column("fee_minor", "int64", min_value=0, description="data.object.balance_transaction.fee"),
        Column("currency", "string", pattern=r"^[A-Z]{3}$", description="ISO 4217, upper case"),
        Column("status", "string", description="data.object.status"),
        Column("is_known_type", "boolean", nullable=False, description="false for types the platform does not know"),
        Column(
            "body",
            "string",
            nullable=False,
            pii=True,
            description="The event body as received (erased subjects' e-mail addresses redacted)",
            identifies="email",
            free_text=True,
        ),
    ),
)

SHOP_EVENTS = SourceSpec(
    name="shop_events",
    reader=WebhookEvents(provider="shop", scheme="standard", payload="standard"),
    dbt_source="shop",
    description="Shop webhook events (Standard Webhooks), one row per message id, partitioned by UTC event date.",
    schema_version=1,
    key=("event_id",),
    unique_key=True,
    owners=("team:commerce-data",),
    freshness=MaxAge(hours=24, warn_hours=12),
    on_erasure=OnErasure.REDACT,
    columns=(
        Column("event_id", "string", nullable=False, description="Standard Webhooks message id (webhook-id)"),
        Column("event_type", "string", nullable=False, description="The body's `type`, e.g. order.shipped"),
        Column("event_created_at", "timestamp", nullable=False, description="The body's `timestamp`"),
        Column("subject_id", "string", description="data.id: the object the event is about"),
        Column(
            "body",
            "string",
            nullable=False,
            pii=True,
            description="The event body as received (erased subjects' e-mail addresses redacted)",
            identifies="email",
            free_text=True,
        ),
    ),
)

SOURCES: dict[str, SourceSpec] = {
    spec.name: spec for spec in (CUSTOMERS, PSP_PAYOUTS, CONSENTS, ORDERS, PAYMENT_EVENTS, SHOP_EVENTS)
}


def partner_file_sources() -> list[SourceSpec]:
    return [s for s in SOURCES.values() if isinstance(s.reader, PartnerFiles)]


def webhook_sources() -> list[SourceSpec]:
    return [s for s in SOURCES.values() if isinstance(s.reader, WebhookEvents)]


def airbyte_sources() -> list[SourceSpec]:
    return [s for s in SOURCES.values() if isinstance(s.reader, AirbyteStream)]


def source_for_file(file_name: str) -> SourceSpec | None:
    """The partner file source whose naming contract this file name claims (by prefix), if any."""
    for spec in partner_file_sources():
        if file_name.startswith(spec.files.file_prefix):
            return spec
    return None


def source_for_provider(provider: str) -> SourceSpec | None:
    """The webhook source a provider's deliveries belong to, if any."""
    for spec in webhook_sources():
        if spec.webhook.provider == provider:
            return spec
    return None


def pii_columns() -> frozenset[str]:
    """Every column any source marks as personal data: never shown in samples, logs or metadata."""
    return frozenset(name for spec in SOURCES.values() for name in spec.pii_columns)
