with

history as (

    select * from {{ ref('customers_history') }}

),

final as (

    select
        {{ surrogate_key(['customer_id', 'valid_from']) }} as customer_sk,
        customer_id,
        email_token,
        email_domain,
        country_code,
        status,
        signup_date,
        lifetime_value,
        valid_from,
        valid_to,
        valid_to is null as is_current,
        -- Lineage: the bronze customers row of the version (docs/lineage.md), one join from its landing file.
        business_date as _source_business_date,
        _source_file,
        _source_row,

    from history

)

select * from final
