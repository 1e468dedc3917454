{#-
    Type-2 history of the customers, computed from every version silver keeps rather than captured by a
    dbt snapshot: a snapshot's history lives only in its own table, so it cannot be rebuilt, backfilled or
    erased from bronze, while this is a pure function of bronze like every other model.

    Incremental runs recompute every version of the customers of the partition window (those silver has
    versions of inside it, and those with a version here delivered inside it, which may have left bronze) and
    merge what changed on (customer_id, valid_from): a new version, the valid_to of the one it follows, and a
    tombstone for each version that is gone (select_changes_with_deletes).
-#}
{{
    config(
        materialized='incremental',
        unique_key=['customer_id', 'valid_from'],
        on_schema_change='fail',
    )
}}

{#- Each CTE reads the versions itself: a CTE read twice is materialized whole, before any filter. #}
with

{% if is_incremental() -%}
recomputed_customers as (

    select customer_id, from {{ ref('stg_acme__customer_versions') }}
    where {{ in_partition_window('business_date') }}

    union

    select customer_id, from {{ this }}
    where {{ in_partition_window('business_date') }}

),

existing as (

    select * from {{ this }}
    semi join recomputed_customers using (customer_id)

),
{%- endif %}

-- One row per customer and change time: the same change delivered on several days counts once, as its
-- latest delivery.
changes as (

    select *
    from {{ ref('stg_acme__customer_versions') }}
    {% if is_incremental() -%}
        semi join recomputed_customers using (customer_id)
    {%- endif %}
    qualify row_number() over (
        partition by customer_id, updated_at
        order by business_date desc, _source_file desc, _source_row desc
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
        _source_row,
        updated_at as valid_from,
        lead(updated_at) over (partition by customer_id order by updated_at) as valid_to,

    from changes

)

{{ select_changes_with_deletes('final', 'existing') }}
