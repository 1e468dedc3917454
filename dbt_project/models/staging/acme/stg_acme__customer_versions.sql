{#-
    The one model that reads raw customer PII: everything downstream sees tokens only.
    Incremental runs replace the business dates of the partition window (delete+insert on business_date),
    which is exactly what a re-materialized bronze partition may have changed.
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

    select * from {{ source('acme', 'customers') }}
    {% if is_incremental() -%}
        where {{ in_partition_window('business_date') }}
    {%- endif %}

),

renamed as (

    select
        customer_id,
        pii_token(nullif(lower(trim(email)), '')) as email_token,
        nullif(split_part(lower(trim(email)), '@', 2), '') as email_domain,
        pii_token(nullif(trim(first_name), '')) as first_name_token,
        pii_token(nullif(trim(last_name), '')) as last_name_token,
        country_code,
        signup_date,
        cast(lifetime_value as decimal(12, 2)) as lifetime_value,
        status,
        cast(updated_at as timestamptz) as updated_at,
        business_date,
        _source_file,
        _source_row,

    from source

),

final as (

    select *
    from renamed
    -- A customer sent twice on one day: the later change wins, then the later file, then the later line.
    qualify row_number() over (
        partition by customer_id, business_date
        order by updated_at desc, _source_file desc, _source_row desc
    ) = 1

)

select * from final
