{#-
    Incremental runs recompute only the customers bronze changed inside the partition window, but pick
    their latest record across every business date, so a backfill of an old day cannot overwrite a newer
    record and the table stays a pure function of bronze.
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='customer_id',
        on_schema_change='fail',
    )
}}

with

versions as (

    select * from {{ ref('stg_acme__customer_versions') }}

),

{% if is_incremental() -%}
changed_customers as (

    select distinct customer_id,
    from versions
    where {{ in_partition_window('business_date') }}

),
{%- endif %}

latest as (

    select versions.*
    from versions
    {% if is_incremental() -%}
        inner join changed_customers
            on versions.customer_id = changed_customers.customer_id
    {%- endif %}
    qualify row_number() over (
        partition by versions.customer_id
        order by
            versions.updated_at desc,
            versions.business_date desc,
            versions._source_file desc,
            versions._source_row desc
    ) = 1

),

final as (

    select
        customer_id,
        email_token,
        email_domain,
        first_name_token,
        last_name_token,
        country_code,
        signup_date,
        lifetime_value,
        status,
        updated_at,
        business_date,
        _source_file,

    from latest

)

select * from final
