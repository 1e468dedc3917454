{#-
    RFM segments from shop orders (cancelled orders do not count). Scores are quintiles 1..5 by percent
    rank, so customers with equal values share a score: recency against every customer, frequency
    likewise, monetary within each currency (no FX conversion) taking the customer's best currency.
    Recency is measured to the latest order date in the data, not to today, so a rebuild of the same
    bronze gives the same segments.
-#}
with

orders as (

    select * from {{ ref('stg_shop__orders') }}
    where customer_id is not null
        and not is_cancelled

),

as_of as (

    select max(order_date) as as_of_date,
    from orders

),

per_currency as (

    select
        customer_id,
        currency,
        sum(total_amount_minor) as monetary_minor,
    from orders
    group by customer_id, currency

),

monetary as (

    select
        customer_id,
        max(least(5, 1 + floor(5 * monetary_pct))::integer) as monetary_score,
    from (
        select
            customer_id,
            percent_rank() over (partition by currency order by monetary_minor) as monetary_pct,
        from per_currency
    ) as ranked
    group by customer_id

),

per_customer as (

    select
        orders.customer_id,
        max(orders.order_date) as last_order_date,
        any_value(as_of.as_of_date) - max(orders.order_date) as recency_days,
        count(*) as frequency,
        any_value(as_of.as_of_date) as as_of_date,
    from orders
    cross join as_of
    group by orders.customer_id

),

scored as (

    select
        per_customer.*,
        least(5, 1 + floor(5 * percent_rank() over (order by recency_days desc)))::integer as recency_score,
        least(5, 1 + floor(5 * percent_rank() over (order by frequency)))::integer as frequency_score,
        monetary.monetary_score,
    from per_customer
    inner join monetary
        on per_customer.customer_id = monetary.customer_id

),

final as (

    select
        customer_id,
        as_of_date,
        last_order_date,
        recency_days,
        frequency,
        recency_score,
        frequency_score,
        monetary_score,
        case
            when recency_score >= 4 and frequency_score >= 4 then 'champions'
            when recency_score >= 3 and frequency_score >= 3 then 'loyal'
            when recency_score >= 4 then 'new'
            when recency_score <= 2 and frequency_score >= 3 then 'at_risk'
            when recency_score <= 2 then 'hibernating'
            else 'needs_attention'
        end as segment,
        -- Valuable customers gone quiet: frequent or high spending, but among the least recent.
        recency_score <= 2 and (frequency_score >= 3 or monetary_score >= 4) as is_churn_risk,

    from scored

)

select * from final
