{#-
    The current state of each charge, derived from its whole event history ordered by when the PSP
    created the events, never by when they arrived: a refund delivered before its capture still leaves the
    charge refunded. Incremental runs recompute only the charges of the partition window, but from all of
    their events, so the table stays a pure function of bronze. The charges of the window are those with
    events inside it and those whose events here spanned it (first_business_date to last_business_date):
    when an event left bronze, the charge is recomputed from the events left, or deleted when none is left
    (select_with_deletes).
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='charge_id',
        on_schema_change='fail',
    )
}}

with

events as (

    select * from {{ ref('stg_psp__payment_events') }}
    where charge_id is not null
        and is_known_type
        and event_type like 'charge.%'

),

{% if is_incremental() -%}
recomputed_charges as (

    select charge_id,
    from events
    where {{ in_partition_window('business_date') }}

    union

    select charge_id,
    from {{ this }}
    where {{ overlaps_partition_window('first_business_date', 'last_business_date') }}

),
{%- endif %}

history as (

    select
        events.*,
        -- Events created in the same second: the later step of a charge's life wins.
        case events.event_type
            when 'charge.pending' then 1
            when 'charge.failed' then 2
            when 'charge.expired' then 2
            when 'charge.succeeded' then 3
            when 'charge.captured' then 4
            when 'charge.refunded' then 5
            when 'charge.dispute.created' then 6
            when 'charge.dispute.closed' then 7
            else 0
        end as lifecycle_step,
    from events
    {% if is_incremental() -%}
        inner join recomputed_charges
            on events.charge_id = recomputed_charges.charge_id
    {%- endif %}

),

ordered as (

    select
        *,
        struct_pack(event_created_at, lifecycle_step, event_id) as event_order,
    from history

),

aggregated as (

    select
        charge_id,
        arg_max(amount_minor, event_order) filter (
            where object_type = 'charge' and amount_minor is not null
        ) as amount_minor,
        arg_max(currency, event_order) filter (
            where object_type = 'charge' and currency is not null
        ) as currency,
        -- amount_refunded on a charge object is cumulative: the latest one is the total refunded
        coalesce(arg_max(amount_refunded_minor, event_order) filter (
            where object_type = 'charge' and amount_refunded_minor is not null
        ), 0) as refunded_minor,
        arg_max(fee_minor, event_order) filter (where fee_minor is not null) as fee_minor,
        arg_max(event_type, event_order) filter (where object_type = 'charge') as last_charge_event_type,
        bool_or(event_type in ('charge.succeeded', 'charge.captured', 'charge.refunded')) as is_captured,
        bool_or(event_type = 'charge.dispute.created') as is_disputed,
        min(event_created_at) filter (
            where event_type in ('charge.succeeded', 'charge.captured', 'charge.refunded')
        ) as captured_at,
        max(event_created_at) filter (where event_type = 'charge.refunded') as refunded_at,
        min(event_created_at) as first_event_at,
        max(event_created_at) as last_event_at,
        count(*) as events_count,
        min(business_date) as first_business_date,
        max(business_date) as last_business_date,
    from ordered
    group by charge_id

),

final as (

    select
        charge_id,
        currency,
        amount_minor,
        case when is_captured then coalesce(amount_minor, 0) else 0 end as captured_minor,
        refunded_minor,
        fee_minor,
        case
            when is_disputed then 'disputed'
            when is_captured and refunded_minor > 0 and refunded_minor >= amount_minor then 'refunded'
            when is_captured and refunded_minor > 0 then 'partially_refunded'
            when is_captured then 'captured'
            when last_charge_event_type = 'charge.failed' then 'failed'
            when last_charge_event_type = 'charge.expired' then 'expired'
            else 'pending'
        end as charge_status,
        is_captured,
        is_disputed,
        captured_at,
        cast(captured_at as date) as captured_date,
        refunded_at,
        first_event_at,
        last_event_at,
        events_count,
        first_business_date,
        last_business_date,

    from aggregated

)

{{ select_with_deletes('final', 'recomputed_charges') }}
