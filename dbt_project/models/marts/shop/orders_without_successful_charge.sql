{#-
    The PSP's charges carry no order or customer reference, so an order is matched to a captured charge
    on currency, amount (minor units) and UTC date (order_date = captured_date), one to one: the n-th
    order of a (currency, amount, date) by ordered_at takes the n-th charge of that key by captured_at.
    Once the shop passes its order id to the PSP (charge metadata), match on that instead.
-#}
with

orders as (

    select * from {{ ref('stg_shop__orders') }}
    where is_paid

),

charges as (

    select * from {{ ref('fct_payments') }}
    where is_captured

),

ranked_orders as (

    select
        *,
        row_number() over (
            partition by currency, total_amount_minor, order_date
            order by ordered_at, order_id
        ) as match_rank,
    from orders

),

ranked_charges as (

    select
        charge_id,
        currency,
        amount_minor,
        captured_date,
        row_number() over (
            partition by currency, amount_minor, captured_date
            order by captured_at, charge_id
        ) as match_rank,
    from charges

),

final as (

    select
        ranked_orders.order_id,
        ranked_orders.customer_id,
        ranked_orders.order_date,
        ranked_orders.ordered_at,
        ranked_orders.currency,
        ranked_orders.total_amount_minor,
        ranked_orders.order_status,

    from ranked_orders
    left join ranked_charges
        on ranked_orders.currency = ranked_charges.currency
        and ranked_orders.total_amount_minor = ranked_charges.amount_minor
        and ranked_orders.order_date = ranked_charges.captured_date
        and ranked_orders.match_rank = ranked_charges.match_rank
    where ranked_charges.charge_id is null

)

select * from final
