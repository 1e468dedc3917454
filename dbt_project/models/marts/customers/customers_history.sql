{#-
    Type-2 history of the customers, computed from every version silver keeps rather than captured by a
    dbt snapshot: a snapshot's history lives only in its own table, so it cannot be rebuilt, backfilled or
    erased from bronze, while this is a pure function of bronze like every other model.

    Incremental runs recompute the versions of the customers of the partition window (those silver has
    versions of inside it, and those with a version here delivered inside it, which may have left bronze) and
    merge what changed on (customer_id, valid_from): a new version, the valid_to of the one it follows, and a
    tombstone for each version that is gone (select_changes_with_ends).

    They find those changes from narrow columns (macros/compare_versions.sql) and read whole rows only of the
    versions that are new here, now come from another delivery, or were delivered in the window (whose
    partitions the run replaced), from the partitions they were delivered in. A version delivered outside the
    window is the row it was when its own day ran: of it only valid_to can change, and only valid_to is sent.
    Partitioned by business_date, so that the window's rows are read without the rest.
-#}
{{
    config(
        materialized='incremental',
        unique_key=['customer_id', 'valid_from'],
        partition_by='business_date',
        partial_update_columns=['valid_to'],
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
    _source_row,
{%- endset %}

with

{% if is_incremental() -%}
{{ compare_versions(this, 'business_date') }},

-- The versions read in whole: new here, delivered by another day than the stored row, or in the window.
read_versions as (

    select customer_id, valid_from, valid_to, business_date,
    from compared
    where business_date is not null
        and (
            stored_business_date is distinct from business_date
            or {{ in_partition_window('business_date') }}
        )

),

-- Joined on business_date too, so the scan reads only the partitions the versions were delivered in.
final as (

    select
        {{ columns }}
        read_versions.valid_from,
        read_versions.valid_to,
    from {{ ref('stg_acme__customer_versions') }} as customer_versions
    inner join read_versions using (customer_id, business_date)

),

changed as (

    select * from final
    except
    select * from {{ this }}
    where {{ in_partition_window('business_date') }}

),

-- A version delivered outside the window is the row it was: only its end may have moved.
ends as (

    select customer_id, valid_from, valid_to,
    from compared
    where business_date = stored_business_date
        and not {{ in_partition_window('business_date') }}
        and valid_to is distinct from stored_valid_to

),

removed as (

    select customer_id, valid_from,
    from compared
    where business_date is null

)
{%- else -%}
-- One row per customer and change time: the same change delivered on several days counts once, as its
-- latest delivery.
changes as (

    select *
    from {{ ref('stg_acme__customer_versions') }}
    qualify row_number() over (
        partition by customer_id, updated_at
        order by business_date desc, _source_file desc, _source_row desc
    ) = 1

),

final as (

    select
        {{ columns }}
        updated_at as valid_from,
        lead(updated_at) over (partition by customer_id order by updated_at) as valid_to,
    from changes

)
{%- endif %}

{{ select_changes_with_ends('final', 'changed', 'ends', 'removed') }}
