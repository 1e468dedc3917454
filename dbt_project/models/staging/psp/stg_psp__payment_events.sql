{#-
    Incremental runs replace the business dates of the partition window (delete+insert on business_date):
    an event's business date is fixed by its creation time, so a rebuilt bronze partition maps onto
    exactly the same silver dates. The raw body stays in bronze.
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='business_date',
        partition_by='business_date',
        on_schema_change='fail',
    )
}}

with

source as (

    select * from {{ source('psp', 'payment_events') }}
    {% if is_incremental() -%}
        where {{ in_partition_window('business_date') }}
    {%- endif %}

),

renamed as (

    select
        event_id,
        event_type,
        cast(event_created_at as timestamptz) as event_created_at,
        business_date,
        livemode as is_livemode,
        object_type,
        charge_id,
        payout_id,
        amount_minor,
        amount_refunded_minor,
        fee_minor,
        currency,
        status,
        is_known_type,
        cast(_received_at as timestamptz) as received_at,
        _source_row as inbox_id,

    from source

),

final as (

    select *
    from renamed
    -- The inbox already holds each event id once; should it not, the first one stored wins.
    qualify row_number() over (partition by event_id order by inbox_id) = 1

)

select * from final
