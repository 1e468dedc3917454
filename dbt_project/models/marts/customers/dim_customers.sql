with

snapshot as (

    select * from {{ ref('customers_snapshot') }}

),

final as (

    select
        {{ surrogate_key(['customer_id', 'dbt_valid_from']) }} as customer_sk,
        customer_id,
        email_token,
        email_domain,
        country_code,
        status,
        signup_date,
        lifetime_value,
        cast(dbt_valid_from as timestamptz) as valid_from,
        cast(dbt_valid_to as timestamptz) as valid_to,
        dbt_valid_to is null as is_current,

    from snapshot

)

select * from final
