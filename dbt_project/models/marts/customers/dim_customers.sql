{#-
    Incremental runs recompute the versions of the customers whose history the window may have changed (the
    customers customers_history recomputes, found the same way from this table's own narrow columns:
    macros/compare_versions.sql) and merge what changed on customer_sk: whole rows, read from customers_history,
    only of the versions that are new here, now come from another delivery, or were delivered in the window;
    of a version delivered outside it only the end (valid_to, is_current). Partitioned by the delivery date, so
    that the window's rows are read without the rest.
-#}
-- depends_on: {{ ref('stg_acme__customer_versions') }}
{{
    config(
        materialized='incremental',
        unique_key='customer_sk',
        partition_by='_source_business_date',
        partial_update_columns=['valid_to', 'is_current'],
        on_schema_change='fail',
    )
}}

with

{% if is_incremental() -%}
{{ compare_versions(this, '_source_business_date') }},

-- The versions read in whole: new here, delivered by another day than the stored row, or in the window.
read_versions as (

    select customer_id, valid_from, business_date,
    from compared
    where business_date is not null
        and (
            stored_business_date is distinct from business_date
            or {{ in_partition_window('business_date') }}
        )

),

-- Joined on business_date too, so the scan reads only the partitions the versions were delivered in.
history as (

    select *
    from {{ ref('customers_history') }}
    semi join read_versions using (customer_id, valid_from, business_date)

),
{%- else -%}
history as (

    select * from {{ ref('customers_history') }}

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

){%- if is_incremental() %},

changed as (

    select * from final
    except
    select * from {{ this }}
    where {{ in_partition_window('_source_business_date') }}

),

-- A version delivered outside the window is the row it was: only its end may have moved.
ends as (

    select
        {{ surrogate_key(['customer_id', 'valid_from']) }} as customer_sk,
        valid_to,
        valid_to is null as is_current,
    from compared
    where business_date = stored_business_date
        and not {{ in_partition_window('business_date') }}
        and valid_to is distinct from stored_valid_to

),

removed as (

    select {{ surrogate_key(['customer_id', 'valid_from']) }} as customer_sk,
    from compared
    where business_date is null

)
{%- endif %}

{{ select_changes_with_ends('final', 'changed', 'ends', 'removed') }}
