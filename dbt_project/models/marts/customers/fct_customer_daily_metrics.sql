{#-
    Computed from the change history (stg_acme__customer_versions), not from the snapshot, so every
    figure is a pure function of bronze whatever order the days were loaded in.
    "At end of day" counts each customer in the state of its latest record (by updated_at, then
    business_date, as in silver) among everything received up to and including that business date.
-#}
with

versions as (

    select
        customer_id,
        business_date,
        updated_at,
        status,
    from {{ ref('stg_acme__customer_versions') }}

),

first_seen as (

    select
        customer_id,
        min(business_date) as first_business_date,
    from versions
    group by customer_id

),

changes as (

    select
        versions.business_date,
        count(*) as customers_changed,
        count(*) filter (
            where versions.business_date = first_seen.first_business_date
        ) as customers_new,
    from versions
    inner join first_seen
        on versions.customer_id = first_seen.customer_id
    group by versions.business_date

),

states as (

    -- The state a customer is in from this business date until its next one.
    select
        customer_id,
        business_date as state_from_date,
        lead(business_date) over (
            partition by customer_id order by business_date
        ) as state_to_date,
        arg_max(status, struct_pack(updated_at, business_date)) over (
            partition by customer_id
            order by business_date
            rows between unbounded preceding and current row
        ) = 'active' as is_active,
    from versions

),

active_deltas as (

    -- +1 the day a customer becomes active, -1 the day it stops being so: a running sum gives the
    -- number active at the end of each day without joining every day to every customer.
    select
        state_from_date as business_date,
        1 as active_delta,
    from states
    where is_active

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
        cast(sum(changes.customers_new) over (
            order by changes.business_date
        ) as bigint) as customers_total_at_end_of_day,
        cast(coalesce(sum(active_by_date.active_delta) over (
            order by changes.business_date
        ), 0) as bigint) as customers_active_at_end_of_day,
    from changes
    left join active_by_date
        on changes.business_date = active_by_date.business_date

)

select * from final
