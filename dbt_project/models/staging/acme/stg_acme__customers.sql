{#-
    Incremental runs recompute only the customers of the partition window, but pick their latest record
    across every business date, so a backfill of an old day cannot overwrite a newer record and the table
    stays a pure function of bronze. The customers of the window are those bronze has records of inside it
    and those whose record here came from it: when that record left bronze, the customer falls back to its
    previous record, or is deleted when none is left (select_with_deletes).
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
recomputed_customers as (

    select customer_id,
    from versions
    where {{ in_partition_window('business_date') }}

    union

    select customer_id,
    from {{ this }}
    where {{ in_partition_window('business_date') }}

),
{%- endif %}

latest as (

    select versions.*
    from versions
    {% if is_incremental() -%}
        inner join recomputed_customers
            on versions.customer_id = recomputed_customers.customer_id
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

{{ select_with_deletes('final', 'recomputed_customers') }}
