{#- Rows whose `columns` (all non-null; nulls are not_null's concern) match no row of `to`, a relation with
    the same column names: e.g. a silver key whose records all left bronze. Checks the whole model, whatever
    the run's window. The GX gates read the same declaration (lib/quality/rules.py `exists_in`). -#}
{% test exists_in(model, to, columns) %}

    select {{ columns | join(', ') }}
    from {{ model }}
    anti join {{ to }} using ({{ columns | join(', ') }})
    where {% for column in columns %}{{ column }} is not null{% if not loop.last %} and {% endif %}{% endfor %}

{% endtest %}
