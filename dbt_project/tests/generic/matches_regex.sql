{#- Non-null values that do not fully match `pattern` (RE2, as DuckDB's regexp_full_match). -#}
{% test matches_regex(model, column_name, pattern) %}

    select {{ column_name }}
    from {{ model }}
    where {{ column_name }} is not null
        and not regexp_full_match({{ column_name }}, '{{ pattern }}')

{% endtest %}
