{#- A rule no column test can say (SCD2 versions, reconciliation totals), written once as the query whose
    rows break it, with `{batch}` for the model. dbt runs the query here; the GX gates run the very same
    text as an UnexpectedRowsExpectation, where `{batch}` is GX's own placeholder (lib/quality/dbt_rules.py).
    Name the rule with the test's `description`. -#}
{% test no_unexpected_rows(model, query) %}

    {{ query | replace('{batch}', model | string) }}

{% endtest %}
