{#- Small enough to rebuild in full each run: one row per shop webhook message. The raw body stays in bronze. -#}
with

source as (

    select * from {{ source('shop', 'shop_events') }}

),

renamed as (

    select
        event_id,
        event_type,
        cast(event_created_at as timestamptz) as occurred_at,
        subject_id,
        business_date,
        _source_file,
        _source_row,

    from source

),

final as (

    select *
    from renamed
    -- The inbox stores a message id once; a rebuilt partition can still repeat one across dates.
    qualify row_number() over (partition by event_id order by business_date, _source_row) = 1

)

select * from final
