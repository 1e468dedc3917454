{#-
    Payout files are small (one line per charge paid out), so this model is rebuilt in full each run
    rather than incrementally. Amounts become minor units: the feed contract fixes two decimal places.
-#}
with

source as (

    select * from {{ source('psp', 'psp_payouts') }}

),

renamed as (

    select
        payout_id,
        charge_id,
        currency,
        cast(round(gross * 100) as bigint) as gross_minor,
        cast(round(fee * 100) as bigint) as fee_minor,
        cast(round(net * 100) as bigint) as net_minor,
        cast(settled_at as timestamptz) as settled_at,
        business_date,
        _source_file,
        _source_row,

    from source

),

final as (

    select *
    from renamed
    -- A line sent again (a corrected or repeated file): the latest file wins, then the later line.
    qualify row_number() over (
        partition by payout_id, charge_id
        order by business_date desc, _source_file desc, _source_row desc
    ) = 1

)

select * from final
