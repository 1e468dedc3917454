{#-
    Computed from the change history (stg_acme__customer_versions), not from the snapshot, so every
    figure is a pure function of bronze whatever order the days were loaded in.
    "At end of day" counts each customer in the state of its latest record (by updated_at, then
    business_date, as in silver) among everything received up to and including that business date.

    The end-of-day figures are running totals, so a change on a business date changes every later one: an
    incremental run recomputes every business date from the start of its window on, and merges them on
    business_date (a date left with no record is deleted). It reads the versions from the window's start on,
    and of the customers changed since then only their latest version before it (their state the day before);
    the totals of that day come from this table's row for it, which a run of any earlier window recomputed.
-#}
{{
    config(
        materialized='incremental',
        unique_key='business_date',
        on_schema_change='fail',
    )
}}

{%- set window = partition_window() if is_incremental() else none %}

{#- Each CTE reads the versions itself: a CTE read twice is materialized whole, before any filter. -#}
{%- set versions -%}
    (select customer_id, business_date, updated_at, status, from {{ ref('stg_acme__customer_versions') }})
{%- endset %}

with

{% if window is not none -%}
recent as (

    select * from {{ versions }} as versions
    where business_date >= date '{{ window[0].isoformat() }}'

),

-- Each customer changed since the window's start, as it stood the day before: its latest earlier version.
earlier as (

    select *
    from {{ versions }} as versions
    semi join recent using (customer_id)
    where business_date < date '{{ window[0].isoformat() }}'
    qualify row_number() over (
        partition by customer_id order by updated_at desc, business_date desc
    ) = 1

),

-- The figures at the end of the last business date before the window (zero before the first one).
before_window as (

    select
        coalesce(max_by(customers_total_at_end_of_day, business_date), 0) as customers_total,
        coalesce(max_by(customers_active_at_end_of_day, business_date), 0) as customers_active,
    from {{ this }}
    where business_date < date '{{ window[0].isoformat() }}'

),

-- Every business date from the window's start on is recomputed: one no record is left on is deleted.
existing as (

    select * from {{ this }}
    where business_date >= date '{{ window[0].isoformat() }}'

),

sequences as (

    select *, false as is_earlier, from recent
    union all
    select *, true as is_earlier, from earlier

),
{%- else -%}
{%- if is_incremental() %}
existing as (

    select * from {{ this }}

),
{%- endif %}

sequences as (

    select *, false as is_earlier, from {{ versions }} as versions

),

before_window as (

    select 0 as customers_total, 0 as customers_active,

),
{%- endif %}

first_seen as (

    select
        customer_id,
        min(business_date) as first_business_date,
    from sequences
    group by customer_id

),

changes as (

    select
        sequences.business_date,
        count(*) as customers_changed,
        count(*) filter (
            where sequences.business_date = first_seen.first_business_date
        ) as customers_new,
    from sequences
    inner join first_seen
        on sequences.customer_id = first_seen.customer_id
    where not sequences.is_earlier
    group by sequences.business_date

),

states as (

    -- The state a customer is in from this business date until its next one.
    select
        customer_id,
        is_earlier,
        business_date as state_from_date,
        lead(business_date) over (
            partition by customer_id order by business_date
        ) as state_to_date,
        arg_max(status, struct_pack(updated_at, business_date)) over (
            partition by customer_id
            order by business_date
            rows between unbounded preceding and current row
        ) = 'active' as is_active,
    from sequences

),

active_deltas as (

    -- +1 the day a customer becomes active, -1 the day it stops being so: a running sum gives the
    -- number active at the end of each day without joining every day to every customer. A customer's
    -- state before the window is already counted in the figures of the day before it: only its end counts.
    select
        state_from_date as business_date,
        1 as active_delta,
    from states
    where is_active and not is_earlier

    union all

    select
        state_to_date as business_date,
        -1 as active_delta,
    from states
    where is_active and state_to_date is not null

),

active_by_date as (

    select
        business_date,
        sum(active_delta) as active_delta,
    from active_deltas
    group by business_date

),

final as (

    select
        changes.business_date,
        changes.customers_changed,
        changes.customers_new,
        changes.customers_changed - changes.customers_new as customers_updated,
        cast(before_window.customers_total + sum(changes.customers_new) over (
            order by changes.business_date
        ) as bigint) as customers_total_at_end_of_day,
        cast(before_window.customers_active + coalesce(sum(active_by_date.active_delta) over (
            order by changes.business_date
        ), 0) as bigint) as customers_active_at_end_of_day,
    from changes
    cross join before_window
    left join active_by_date
        on changes.business_date = active_by_date.business_date

)

{{ select_changes_with_deletes('final', 'existing') }}
