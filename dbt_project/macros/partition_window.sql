{#-
    Predicate restricting `column` to the run's partition window (vars `min_date`/`max_date`, inclusive
    ISO dates). Without vars it is `true`: the model then recomputes from all of bronze.
    The dates are parsed before rendering so only well-formed dates reach the SQL.
-#}
{% macro in_partition_window(column) -%}
    {%- set min_date = var('min_date', none) -%}
    {%- set max_date = var('max_date', none) -%}
    {%- if min_date is none and max_date is none -%}
        true
    {%- elif min_date is none or max_date is none -%}
        {{ exceptions.raise_compiler_error("vars min_date and max_date must be given together") }}
    {%- else -%}
        {%- set start = modules.datetime.date.fromisoformat(min_date | string) -%}
        {%- set end = modules.datetime.date.fromisoformat(max_date | string) -%}
        {%- if end < start -%}
            {{ exceptions.raise_compiler_error("max_date " ~ end ~ " is before min_date " ~ start) }}
        {%- endif -%}
        {{ column }} between date '{{ start.isoformat() }}' and date '{{ end.isoformat() }}'
    {%- endif -%}
{%- endmacro %}

{#-
    The same window as a Delta predicate (deltalake's SQL dialect) for replacing a partitioned model's rows,
    or none when the run has no window (then the whole table is rebuilt).
-#}
{% macro partition_window_predicate(column) -%}
    {%- set min_date = var('min_date', none) -%}
    {%- set max_date = var('max_date', none) -%}
    {%- if min_date is none and max_date is none -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set start = modules.datetime.date.fromisoformat(min_date | string) -%}
    {%- set end = modules.datetime.date.fromisoformat(max_date | string) -%}
    {{ return(column ~ " >= '" ~ start.isoformat() ~ "' and " ~ column ~ " <= '" ~ end.isoformat() ~ "'") }}
{%- endmacro %}
