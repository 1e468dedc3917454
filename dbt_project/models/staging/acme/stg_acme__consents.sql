{#- Small enough to rebuild in full each run: one row per customer and channel, the latest consent. -#}
with

source as (

    select * from {{ source('acme', 'consents') }}

),

renamed as (

    select
        customer_id,
        channel,
        consent_status,
        consent_status = 'granted' as is_granted,
        cast(changed_at as timestamptz) as changed_at,
        business_date,
        _source_file,
        _source_row,

    from source

),

final as (

    select *
    from renamed
    -- A later change, or the same change delivered again on a later date, wins.
    qualify row_number() over (
        partition by customer_id, channel
        order by changed_at desc, business_date desc, _source_file desc, _source_row desc
    ) = 1

)

select * from final
