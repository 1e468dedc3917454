{#-
    The run's partition window: vars `min_date`/`max_date` (inclusive ISO dates), parsed so only well-formed
    dates reach the SQL, as [start, end] dates; none without vars (the run then covers all of bronze).
    Dagster gives the window in the command's run file instead, so that dbt keeps its parse from one command
    to the next: the lake plugin makes it the table macro `medallion_partition_window()`, read here when the
    command has no such vars.
-#}
{% macro partition_window() -%}
    {%- set min_date = var('min_date', none) -%}
    {%- set max_date = var('max_date', none) -%}
    {%- if min_date is none and max_date is none and execute -%}
        {%- set given = run_query('select min_date, max_date from medallion_partition_window()') -%}
        {%- if given.rows | length -%}
            {%- set min_date, max_date = given.rows[0][0], given.rows[0][1] -%}
        {%- endif -%}
    {%- endif -%}
    {%- if min_date is none and max_date is none -%}
        {{ return(none) }}
    {%- elif min_date is none or max_date is none -%}
        {{ exceptions.raise_compiler_error("vars min_date and max_date must be given together") }}
    {%- endif -%}
    {%- set start = modules.datetime.date.fromisoformat(min_date | string) -%}
    {%- set end = modules.datetime.date.fromisoformat(max_date | string) -%}
    {%- if end < start -%}
        {{ exceptions.raise_compiler_error("max_date " ~ end ~ " is before min_date " ~ start) }}
    {%- endif -%}
    {{ return([start, end]) }}
{%- endmacro %}

{#- Predicate restricting `column` to the run's partition window; `true` without one. -#}
{% macro in_partition_window(column) -%}
    {%- set window = partition_window() -%}
    {%- if window is none -%}
        true
    {%- else -%}
        {{ column }} between date '{{ window[0].isoformat() }}' and date '{{ window[1].isoformat() }}'
    {%- endif -%}
{%- endmacro %}

{#-
    Predicate: the dates [first_column, last_column] overlap the run's partition window, for a row computed
    from records of several business dates (e.g. a charge from its events); `true` without a window.
-#}
{% macro overlaps_partition_window(first_column, last_column) -%}
    {%- set window = partition_window() -%}
    {%- if window is none -%}
        true
    {%- else -%}
        {{ first_column }} <= date '{{ window[1].isoformat() }}' and {{ last_column }} >= date '{{ window[0].isoformat() }}'
    {%- endif -%}
{%- endmacro %}

{#-
    The same window as a Delta predicate (deltalake's SQL dialect) for replacing a partitioned model's rows,
    or none when the run has no window (then the whole table is rebuilt).
-#}
{% macro partition_window_predicate(column) -%}
    {%- set window = partition_window() -%}
    {%- if window is none -%}
        {{ return(none) }}
    {%- endif -%}
    {{ return(column ~ " >= '" ~ window[0].isoformat() ~ "' and " ~ column ~ " <= '" ~ window[1].isoformat() ~ "'") }}
{%- endmacro %}
