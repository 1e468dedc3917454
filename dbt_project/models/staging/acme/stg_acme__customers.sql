{#-
    Incremental runs recompute only the customers of the partition window, and pick their latest record across
    every business date, so a backfill of an old day cannot overwrite a newer record and the table stays a pure
    function of bronze. The customers of the window are those bronze has records of inside it and those whose
    record here came from it: when that record left bronze, the customer falls back to its previous record, or
    is deleted when none is left.

    A run reads the window's versions and the current records of those customers, not their whole history: a
    record here that came from outside the window is still the latest of every version outside it, so the
    customer's latest is the later of it and the window's. Only a customer whose record came from the window and
    whose window versions are now older (or gone) has its other versions read. Records that did not change are
    not rewritten (select_changes_with_deletes).
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='customer_id',
        on_schema_change='fail',
    )
}}

{%- set columns -%}
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
{%- endset %}

{#- Each CTE reads the versions itself: a CTE read twice is materialized whole, before any filter. #}
with

{% if is_incremental() -%}
window_versions as (

    select * from {{ ref('stg_acme__customer_versions') }}
    where {{ in_partition_window('business_date') }}

),

recomputed_customers as (

    select customer_id, from window_versions

    union

    select customer_id, from {{ this }}
    where {{ in_partition_window('business_date') }}

),

existing as (

    select * from {{ this }}
    semi join recomputed_customers using (customer_id)

),

window_latest as (

    select
        customer_id,
        max(struct_pack(updated_at, business_date, _source_file)) as record_key,
    from window_versions
    group by customer_id

),

-- Customers whose record came from the window and lost it: their versions outside the window decide.
fallback_customers as (

    select existing.customer_id,
    from existing
    left join window_latest
        on existing.customer_id = window_latest.customer_id
    where {{ in_partition_window('existing.business_date') }}
        and (
            window_latest.record_key is null
            or window_latest.record_key
            < struct_pack(existing.updated_at, existing.business_date, existing._source_file)
        )

),

candidates as (

    select {{ columns }} _source_row,
    from window_versions

    union all

    select {{ columns }} cast(null as bigint) as _source_row,
    from existing
    where not {{ in_partition_window('business_date') }}

    union all

    select {{ columns }} _source_row,
    from {{ ref('stg_acme__customer_versions') }}
    semi join fallback_customers using (customer_id)
    where not {{ in_partition_window('business_date') }}

),
{%- else -%}
candidates as (

    select * from {{ ref('stg_acme__customer_versions') }}

),
{%- endif %}

latest as (

    select *
    from candidates
    -- A record that came from outside the window never ties with one from inside it (their business dates
    -- differ), so its missing _source_row is never compared.
    qualify row_number() over (
        partition by customer_id
        order by updated_at desc, business_date desc, _source_file desc, _source_row desc
    ) = 1

),

final as (

    select {{ columns }}
    from latest

)

{{ select_changes_with_deletes('final', 'existing') }}
