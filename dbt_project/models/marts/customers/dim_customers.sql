{#-
    Incremental runs recompute the versions of the customers whose history the window may have changed (the
    customers customers_history recomputes) and merge what changed on customer_sk.
-#}
{{
    config(
        materialized='incremental',
        unique_key='customer_sk',
        on_schema_change='fail',
    )
}}

with

history as (

    select * from {{ ref('customers_history') }}

),

versions as (

    select customer_id, business_date, from {{ ref('stg_acme__customer_versions') }}

),

{% if is_incremental() -%}
recomputed_customers as (

    select customer_id, from versions
    where {{ in_partition_window('business_date') }}

    union

    select customer_id, from {{ this }}
    where {{ in_partition_window('_source_business_date') }}

),

existing as (

    select * from {{ this }}
    semi join recomputed_customers using (customer_id)

),
{%- endif %}

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
    {% if is_incremental() -%}
        semi join recomputed_customers using (customer_id)
    {%- endif %}

)

{{ select_changes_with_deletes('final', 'existing') }}
