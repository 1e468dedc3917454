{#-
    Revenue per customer and currency from shop orders (no FX conversion: amounts are only ever summed
    within one currency). Guest orders (no customer_id) have no customer to attribute them to.
-#}
with

orders as (

    select * from {{ ref('stg_shop__orders') }}
    where customer_id is not null

),

customers as (

    select * from {{ ref('dim_customers') }}
    where is_current

),

per_customer as (

    select
        customer_id,
        currency,
        count(*) filter (where not is_cancelled) as orders_count,
        count(*) filter (where is_paid) as paid_orders_count,
        count(*) filter (where is_cancelled) as cancelled_orders_count,
        coalesce(sum(total_amount_minor) filter (where not is_cancelled), 0) as booked_minor,
        coalesce(sum(total_amount_minor) filter (where is_paid), 0) as revenue_minor,
        min(order_date) filter (where not is_cancelled) as first_order_date,
        max(order_date) filter (where not is_cancelled) as last_order_date,
    from orders
    group by customer_id, currency

),

final as (

    select
        per_customer.customer_id,
        per_customer.currency,
        per_customer.orders_count,
        per_customer.paid_orders_count,
        per_customer.cancelled_orders_count,
        per_customer.booked_minor,
        per_customer.revenue_minor,
        per_customer.first_order_date,
        per_customer.last_order_date,
        customers.customer_sk,
        customers.country_code,
        customers.email_domain,
        customers.status as customer_status,
        customers.customer_id is not null as is_known_customer,

    from per_customer
    left join customers
        on per_customer.customer_id = customers.customer_id

)

select * from final
