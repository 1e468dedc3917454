{#- Small enough to rebuild in full each run: one row per order, its latest delivered state. -#}
with

source as (

    select * from {{ source('shop', 'orders') }}

),

renamed as (

    select
        order_id,
        customer_id,
        order_date,
        cast(ordered_at as timestamptz) as ordered_at,
        cast(total_amount as decimal(12, 2)) as total_amount,
        cast(round(total_amount * 100) as bigint) as total_amount_minor,
        currency,
        status as order_status,
        status = 'cancelled' as is_cancelled,
        status in ('paid', 'shipped') as is_paid,
        cast(_airbyte_extracted_at as timestamptz) as extracted_at,
        business_date,
        _source_file,
        _source_row,

    from source

),

final as (

    select *
    from renamed
    -- The same order in two partitions (its order date changed): the latest delivery wins.
    qualify row_number() over (
        partition by order_id
        order by extracted_at desc, business_date desc, _source_file desc, _source_row desc
    ) = 1

)

select * from final
