{#- Snapshot bookkeeping times as TIMESTAMPTZ, the type of every change time in silver and gold. -#}
{% macro duckdb__snapshot_get_time() -%}
    {{ current_timestamp() }}::timestamptz
{%- endmacro %}
