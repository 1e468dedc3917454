{#-
    Drop the warehouse copies of plugin-loaded sources (bronze Delta tables) at the end of a run.
    They only exist so that models can read bronze during the invocation and would otherwise keep raw
    PII in the warehouse file.
-#}
{% macro drop_plugin_sources() %}
    {%- if execute -%}
        {%- for source_node in graph.sources.values() if source_node.meta.get('plugin') -%}
            drop table if exists {{ source_node.schema }}.{{ source_node.identifier }};
        {% endfor -%}
    {%- endif -%}
{% endmacro %}
