{#-
    Per payout: what the charges it settles should have paid (captured - refunds - fees) against what the
    PSP paid. Captures and refunds come from the webhook history (stg_psp__charges), fees and the paid net
    from the payout file, and the paid amount also from the payout.paid webhook when one arrived.
    status:
      matched         the file's net equals captured - refunds - fees (and the payout.paid amount, if any)
      mismatched      it does not; difference_minor says by how much
      missing_charge  the file lists a charge no webhook ever told us about
      missing_payout  a payout.paid webhook arrived but no payout file lists the payout (yet)
    Rebuilt in full each run: one row per payout.
-#}
with

payout_lines as (

    select * from {{ ref('stg_psp__payouts') }}

),

charges as (

    select
        charge_id,
        captured_minor,
        refunded_minor,
    from {{ ref('stg_psp__charges') }}

),

payout_events as (

    select
        payout_id,
        arg_max(amount_minor, struct_pack(event_created_at, event_id)) as paid_amount_minor,
        arg_max(currency, struct_pack(event_created_at, event_id)) as currency,
        max(event_created_at) as paid_at,
    from {{ ref('stg_psp__payment_events') }}
    where event_type = 'payout.paid'
        and payout_id is not null
    group by payout_id

),

lines as (

    select
        payout_lines.payout_id,
        payout_lines.currency,
        payout_lines.fee_minor,
        payout_lines.net_minor,
        payout_lines.settled_at,
        charges.charge_id is not null as is_charge_known,
        coalesce(charges.captured_minor, 0) as captured_minor,
        coalesce(charges.refunded_minor, 0) as refunded_minor,
    from payout_lines
    left join charges
        on payout_lines.charge_id = charges.charge_id

),

settled as (

    select
        payout_id,
        min(currency) as currency,
        max(settled_at) as settled_at,
        count(*) as charges_count,
        count(*) filter (where not is_charge_known) as missing_charges_count,
        sum(captured_minor) as captured_minor,
        sum(refunded_minor) as refunded_minor,
        sum(fee_minor) as fee_minor,
        sum(net_minor) as net_paid_minor,
    from lines
    group by payout_id

),

joined as (

    select
        coalesce(settled.payout_id, payout_events.payout_id) as payout_id,
        coalesce(settled.currency, payout_events.currency) as currency,
        settled.payout_id is not null as has_payout_file,
        settled.settled_at,
        payout_events.paid_at,
        coalesce(settled.charges_count, 0) as charges_count,
        coalesce(settled.missing_charges_count, 0) as missing_charges_count,
        cast(coalesce(settled.captured_minor, 0) as bigint) as captured_minor,
        cast(coalesce(settled.refunded_minor, 0) as bigint) as refunded_minor,
        cast(coalesce(settled.fee_minor, 0) as bigint) as fee_minor,
        cast(settled.net_paid_minor as bigint) as file_net_minor,
        payout_events.paid_amount_minor,
    from settled
    full outer join payout_events
        on settled.payout_id = payout_events.payout_id

),

final as (

    select
        payout_id,
        currency,
        settled_at,
        paid_at,
        charges_count,
        missing_charges_count,
        captured_minor,
        refunded_minor,
        fee_minor,
        captured_minor - refunded_minor - fee_minor as expected_net_minor,
        coalesce(file_net_minor, paid_amount_minor) as net_paid_minor,
        paid_amount_minor,
        coalesce(file_net_minor, paid_amount_minor)
        - (captured_minor - refunded_minor - fee_minor) as difference_minor,
        case
            when not has_payout_file then 'missing_payout'
            when missing_charges_count > 0 then 'missing_charge'
            when file_net_minor <> captured_minor - refunded_minor - fee_minor then 'mismatched'
            when paid_amount_minor <> file_net_minor then 'mismatched'
            else 'matched'
        end as status,

    from joined

)

select * from final
