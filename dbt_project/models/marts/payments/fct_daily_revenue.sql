{#-
    Revenue by the UTC date a charge was captured: refunds count against the day of the charge they
    refund (a cohort view), so a day's figures change when one of its charges is refunded later.
    Rebuilt in full each run.
-#}
with

payments as (

    select * from {{ ref('fct_payments') }}
    where is_captured

),

final as (

    select
        captured_date as revenue_date,
        currency,
        count(*) as charges_captured,
        count(*) filter (where refunded_minor > 0) as charges_refunded,
        cast(sum(captured_minor) as bigint) as captured_minor,
        cast(sum(refunded_minor) as bigint) as refunded_minor,
        cast(sum(coalesce(fee_minor, 0)) as bigint) as fee_minor,
        cast(sum(captured_minor - refunded_minor) as bigint) as net_revenue_minor,

    from payments
    group by captured_date, currency

)

select * from final
