{#-
    CTEs of an incremental run of a type-2 model of the customers (customers_history, dim_customers): the
    versions of the window's customers, one per customer and change time (valid_from) as its latest delivery,
    with the change that ends it (valid_to), against the rows the model stores for them, from narrow columns
    only (customer_id, valid_from, valid_to and the delivery's business date):

    - `recomputed_customers`: customers with a version delivered in the window, or a stored row delivered in it;
    - `compared`: per key (customer_id, valid_from), the recomputed valid_to and business_date (null when the
      version is gone) beside the stored ones (null when it is new).

    `stored` is the model's table and `stored_date_column` its column of the delivery's business date. The
    versions are computed from the stored rows rather than from every version silver keeps: a stored row
    delivered outside the window still is its key's latest delivery outside it (those partitions did not
    change), so a key's latest delivery is the later of it and the window's. Only a key whose stored row came
    from the window and that the window no longer delivers has its other deliveries read, from silver.
-#}
{% macro compare_versions(stored, stored_date_column) -%}
recomputed_customers as (

    select customer_id, from {{ ref('stg_acme__customer_versions') }}
    where {{ in_partition_window('business_date') }}

    union

    select customer_id, from {{ stored }}
    where {{ in_partition_window(stored_date_column) }}

),

stored_versions as (

    select customer_id, valid_from, valid_to, {{ stored_date_column }} as business_date,
    from {{ stored }}
    semi join recomputed_customers using (customer_id)

),

window_deliveries as (

    select customer_id, updated_at as valid_from, business_date,
    from {{ ref('stg_acme__customer_versions') }}
    where {{ in_partition_window('business_date') }}

),

deliveries as (

    select customer_id, valid_from, business_date,
    from stored_versions
    where not {{ in_partition_window('business_date') }}

    union all

    select * from window_deliveries

    union all

    -- Keys delivered by the window before and not now: their deliveries from other days (none: the key is
    -- gone). Silver is read only when there is such a key.
    select customer_id, updated_at as valid_from, business_date,
    from {{ ref('stg_acme__customer_versions') }}
    semi join (
        select stored_versions.customer_id, stored_versions.valid_from as updated_at,
        from stored_versions
        anti join window_deliveries using (customer_id, valid_from)
        where {{ in_partition_window('stored_versions.business_date') }}
    ) as window_left using (customer_id, updated_at)
    where not {{ in_partition_window('business_date') }}

),

versions as (

    select
        customer_id,
        valid_from,
        lead(valid_from) over (partition by customer_id order by valid_from) as valid_to,
        business_date,
    from (
        -- The same change delivered on several days is one version, its latest delivery (silver keeps one
        -- version per customer and business date).
        select *
        from deliveries
        qualify row_number() over (partition by customer_id, valid_from order by business_date desc) = 1
    ) as changes

),

compared as (

    select
        coalesce(versions.customer_id, stored_versions.customer_id) as customer_id,
        coalesce(versions.valid_from, stored_versions.valid_from) as valid_from,
        versions.valid_to,
        versions.business_date,
        stored_versions.valid_to as stored_valid_to,
        stored_versions.business_date as stored_business_date,
    from versions
    full join stored_versions
        on versions.customer_id = stored_versions.customer_id
        and versions.valid_from = stored_versions.valid_from

)
{%- endmacro %}
