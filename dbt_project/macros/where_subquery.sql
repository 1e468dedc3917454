{#-
    A data test's `where` config may name the run's partition window: `__partition_window__(business_date)`
    becomes in_partition_window('business_date'), `true` without a window. A test of a model replaced by
    partition (stg_acme__customer_versions) then checks the partitions the run wrote rather than every
    partition of history again, and a run without a window (a full refresh) checks them all. dbt renders a
    `where` before project macros exist, hence the placeholder (dbt's documented way: override
    get_where_subquery). A gated model's tests cannot take a `where` (lib/quality/dbt_rules.py).
-#}
{% macro duckdb__get_where_subquery(relation) -%}
    {%- set where = config.get('where', '') -%}
    {%- if not where -%}
        {{ return(relation) }}
    {%- endif -%}
    {%- set pattern = '__partition_window__\\(([a-z_][a-z0-9_]*)\\)' -%}
    {%- set rendered = namespace(where=where) -%}
    {%- for column in modules.re.findall(pattern, where) -%}
        {%- set rendered.where = rendered.where | replace(
            '__partition_window__(' ~ column ~ ')', '(' ~ (in_partition_window(column) | trim) ~ ')'
        ) -%}
    {%- endfor -%}
    {%- set filtered -%}
        (select * from {{ relation }} where {{ rendered.where }}) dbt_subquery
    {%- endset -%}
    {{ return(filtered) }}
{%- endmacro %}
