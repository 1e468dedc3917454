{#- Small enough to rebuild in full each run: one row per charge. -#}
with

charges as (

    select * from {{ ref('stg_psp__charges') }}

),

payout_lines as (

    select
        charge_id,
        payout_id,
        settled_at,
    from {{ ref('stg_psp__payouts') }}
    -- A charge listed in more than one payout (an adjustment): report the latest one.
    qualify row_number() over (
        partition by charge_id order by settled_at desc, payout_id desc
    ) = 1

),

final as (

    select
        charges.charge_id,
        payout_lines.payout_id,
        charges.currency,
        charges.amount_minor,
        charges.captured_minor,
        charges.refunded_minor,
        charges.captured_minor - charges.refunded_minor as net_captured_minor,
        charges.fee_minor,
        charges.charge_status,
        charges.is_captured,
        charges.is_disputed,
        charges.captured_at,
        charges.captured_date,
        charges.refunded_at,
        payout_lines.settled_at as paid_out_at,

    from charges
    left join payout_lines
        on charges.charge_id = payout_lines.charge_id

)

select * from final
