{#-
    Incremental runs recompute only the customers of the partition window, and pick their latest record across
    every business date, so a backfill of an old day cannot overwrite a newer record and the table stays a pure
    function of bronze. The customers of the window are those bronze has records of inside it and those whose
    record here came from it: when that record left bronze, the customer falls back to its previous record, or
    is deleted when none is left.

    A run reads the window's versions and the current records of those customers, not their whole history: a
    record here that came from outside the window is still the latest of every version outside it, so the
    customer's latest is the later of it and the window's. Only a customer whose record came from the window and
    whose window versions are now older (or gone) has its other versions read. The latest is chosen from narrow
    columns (which record each one is), and only a record from the window or a fallback is read in whole; records
    that did not change are not rewritten (select_changes_with_ends). Partitioned by business_date, so that the
    window's records are read without the rest.
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='customer_id',
        partition_by='business_date',
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

-- The stored records of those customers, narrow: which record each one is.
existing as (

    select customer_id, updated_at, business_date, _source_file,
    from {{ this }}
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

    select customer_id, updated_at, business_date, _source_file, _source_row,
    from window_versions

    union all

    select customer_id, updated_at, business_date, _source_file, cast(null as bigint) as _source_row,
    from existing
    where not {{ in_partition_window('business_date') }}

    union all

    select customer_id, updated_at, business_date, _source_file, _source_row,
    from {{ ref('stg_acme__customer_versions') }}
    semi join fallback_customers using (customer_id)
    where not {{ in_partition_window('business_date') }}

),

latest as (

    select customer_id, business_date,
    from candidates
    -- A record that came from outside the window never ties with one from inside it (their business dates
    -- differ), so its missing _source_row is never compared.
    qualify row_number() over (
        partition by customer_id
        order by updated_at desc, business_date desc, _source_file desc, _source_row desc
    ) = 1

),

-- The records read in whole: from the window, or another day's than the stored one. A stored record from
-- outside the window that stays the latest is the row it was: it is not read.
read_records as (

    select latest.customer_id, latest.business_date,
    from latest
    left join existing
        on latest.customer_id = existing.customer_id
    where {{ in_partition_window('latest.business_date') }}
        or existing.business_date is distinct from latest.business_date

),

-- Joined on business_date too, so the scan reads only the partitions the records came from.
final as (

    select {{ columns }}
    from {{ ref('stg_acme__customer_versions') }}
    inner join read_records using (customer_id, business_date)

),

changed as (

    select * from final
    except
    select * from {{ this }}
    where {{ in_partition_window('business_date') }}

),

removed as (

    select customer_id,
    from existing
    anti join latest using (customer_id)

)
{%- else -%}
final as (

    select {{ columns }}
    from {{ ref('stg_acme__customer_versions') }}
    qualify row_number() over (
        partition by customer_id
        order by updated_at desc, business_date desc, _source_file desc, _source_row desc
    ) = 1

)
{%- endif %}

{{ select_changes_with_ends('final', 'changed', none, 'removed') }}
