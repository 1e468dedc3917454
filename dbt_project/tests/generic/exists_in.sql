{#- Rows whose `columns` (all non-null; nulls are not_null's concern) match no row of `to`, a relation with
    the same column names: e.g. a silver key whose records all left bronze. The GX gates read the same
    declaration (lib/quality/rules.py `exists_in`). A test restricted to the partition window by its columns
    (`where: "__partition_window__(business_date)"`) reads only the window of `to` as well: a row of the window
    can only match one there. -#}
{% test exists_in(model, to, columns) %}

    {%- set window_columns = partition_window_columns(config.get('where', '')) -%}
    {%- set names = columns | join(', ') %}

    select {{ names }}
    from {{ model }}
    anti join (
        select {{ names }}
        from {{ to }}
        {%- if window_columns and window_columns | reject('in', columns) | list | length == 0 %}
        where {% for column in window_columns %}{{ in_partition_window(column) }}{% if not loop.last %} and {% endif %}{% endfor %}
        {%- endif %}
    ) as exists_in_to using ({{ names }})
    where {% for column in columns %}{{ column }} is not null{% if not loop.last %} and {% endif %}{% endfor %}

{% endtest %}
