{#-
    A data test's `where` config may name the run's partition window, so that a windowed run checks the rows
    it wrote rather than every row of history again, and a run without a window (a full refresh) checks them
    all. dbt renders a `where` before project macros exist, hence placeholders (dbt's documented way: override
    get_where_subquery):

    - `__partition_window__(business_date)`: the rows whose business_date is in the window
      (in_partition_window('business_date'));
    - `__partition_window_keys__(customer_id, _source_business_date)`: every row of the customer_ids that have
      a row whose _source_business_date is in the window, for a rule that compares a customer's rows with each
      other (one current version, versions that do not overlap).

    Without a window each is `true`. A gated model's tests may take only these (lib/quality/dbt_rules.py): its
    Great Expectations gate checks the same rules on the whole table on every run.
-#}
{% macro duckdb__get_where_subquery(relation) -%}
    {%- set where = config.get('where', '') -%}
    {%- if not where -%}
        {{ return(relation) }}
    {%- endif -%}
    {%- set filtered -%}
        (select * from {{ relation }} where {{ partition_window_where(where, relation) }}) dbt_subquery
    {%- endset -%}
    {{ return(filtered) }}
{%- endmacro %}

{#- `where` with its partition window placeholders rendered as SQL predicates on `relation`. -#}
{% macro partition_window_where(where, relation) -%}
    {%- set rendered = namespace(where=where) -%}
    {%- for column in modules.re.findall('__partition_window__\\(\\s*([a-z_][a-z0-9_]*)\\s*\\)', where) -%}
        {%- set rendered.where = modules.re.sub(
            '__partition_window__\\(\\s*' ~ column ~ '\\s*\\)', '(' ~ (in_partition_window(column) | trim) ~ ')',
            rendered.where
        ) -%}
    {%- endfor -%}
    {%- set keys_pattern = '__partition_window_keys__\\(\\s*([a-z_][a-z0-9_]*)\\s*,\\s*([a-z_][a-z0-9_]*)\\s*\\)' -%}
    {%- for key, column in modules.re.findall(keys_pattern, where) -%}
        {%- set window = in_partition_window(column) | trim -%}
        {%- set predicate = 'true' if window == 'true' else
            key ~ ' in (select ' ~ key ~ ' from ' ~ relation ~ ' where ' ~ window ~ ')' -%}
        {%- set rendered.where = modules.re.sub(
            '__partition_window_keys__\\(\\s*' ~ key ~ '\\s*,\\s*' ~ column ~ '\\s*\\)', '(' ~ predicate ~ ')',
            rendered.where
        ) -%}
    {%- endfor -%}
    {{ return(rendered.where) }}
{%- endmacro %}

{#-
    The columns of a `where` made only of `__partition_window__(column)` placeholders joined by `and`, or none
    for any other `where`: a test that reads another relation by those columns (exists_in) may then restrict
    that relation to the window too.
-#}
{% macro partition_window_columns(where) -%}
    {%- set placeholder = '__partition_window__\\(\\s*([a-z_][a-z0-9_]*)\\s*\\)' -%}
    {%- if not where or not modules.re.fullmatch(
        '\\s*' ~ placeholder ~ '(\\s+(?i:and)\\s+' ~ placeholder ~ ')*\\s*', where
    ) -%}
        {{ return(none) }}
    {%- endif -%}
    {{ return(modules.re.findall(placeholder, where)) }}
{%- endmacro %}
