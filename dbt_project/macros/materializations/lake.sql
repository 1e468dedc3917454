{#-
    Silver and gold live in the lake as Delta tables; DuckDB is only the compute of one dbt invocation
    (an in-memory database, see profiles.yml and lib/dbt_plugins/lake.py). These materializations replace
    dbt-duckdb's `table` and `incremental`: the model's SELECT runs into a scratch table of the in-memory
    database, the lake plugin writes it to `<lake>/<schema>/<model>` in one Delta commit, and the model's
    relation becomes a view over that Delta table, which is what `ref()`, tests and later models read.

    Incremental models:
    - first build, full refresh, or a partitioned model run without a partition window: the whole table;
    - partitioned (`partition_by` equal to `unique_key`, e.g. business_date): the rows of the partition
      window are replaced (`replace_where`), so a row that left bronze leaves the model too;
    - any other `unique_key`: rows with a key in the new rows are replaced, the others inserted (`merge`);
      the model ends with `select_with_deletes` (macros/merge_deletes.sql), whose tombstones delete the keys
      it recomputed to nothing, so a key whose records all left bronze leaves the model too; a model ending
      with `select_changes_with_ends` may also send rows that set only its `partial_update_columns`.
-#}

{% macro lake_build(mode, predicate=none) %}
    {%- set target_relation = this.incorporate(type='view') -%}
    {%- set scratch = api.Relation.create(
        database=this.database, schema=this.schema, identifier=this.identifier ~ '__lake_scratch', type='table'
    ) -%}
    {%- set unique_key = config.get('unique_key') -%}
    {%- set unique_key = [unique_key] if unique_key is string else (unique_key or []) -%}
    {%- set partition_by = config.get('partition_by') -%}
    {%- set partition_by = [partition_by] if partition_by is string else (partition_by or []) -%}

    {{ run_hooks(pre_hooks, inside_transaction=False) }}
    {{ run_hooks(pre_hooks, inside_transaction=True) }}
    {%- if mode == 'merge' %}
        {#- The model reads its own table: pin the version it reads, which its merge then commits on. -#}
        {% do adapter.store_relation('lake', this, [], '', 'delta', {
            'schema': this.schema, 'identifier': this.identifier, 'mode': 'pin',
        }) %}
    {%- endif %}
    {% call statement('main') -%}
        create or replace table {{ scratch }} as (
            {{ model['compiled_code'] }}
        )
    {%- endcall %}
    {{ run_hooks(post_hooks, inside_transaction=True) }}
    {% do adapter.commit() %}

    {% do adapter.store_relation('lake', scratch, [], '', 'delta', {
        'schema': this.schema,
        'identifier': this.identifier,
        'mode': mode,
        'predicate': predicate,
        'unique_key': unique_key,
        'partition_by': partition_by,
        'partial_update_columns': config.get('partial_update_columns') or [],
        'description': model.get('description') or '',
    }) %}

    {% call statement('drop_scratch') -%}
        drop table if exists {{ scratch }}
    {%- endcall %}
    {% do adapter.commit() %}
    {{ run_hooks(post_hooks, inside_transaction=False) }}
    {% do adapter.cache_added(target_relation) %}
    {{ return({'relations': [target_relation]}) }}
{% endmacro %}


{% materialization table, adapter='duckdb' %}
    {{ return(lake_build('overwrite')) }}
{% endmaterialization %}


{% materialization incremental, adapter='duckdb' %}
    {%- set existing = load_cached_relation(this) -%}
    {%- set unique_key = config.get('unique_key') -%}
    {%- set partition_by = config.get('partition_by') -%}
    {%- if existing is none or should_full_refresh() -%}
        {{ return(lake_build('overwrite')) }}
    {%- elif partition_by is not none and partition_by == unique_key -%}
        {%- set window = partition_window_predicate(partition_by) -%}
        {{ return(lake_build('replace_where', window) if window else lake_build('overwrite')) }}
    {%- elif unique_key -%}
        {{ return(lake_build('merge')) }}
    {%- else -%}
        {{ exceptions.raise_compiler_error(
            "incremental model " ~ this.identifier ~ " needs a unique_key (or partition_by = unique_key)"
        ) }}
    {%- endif -%}
{% endmaterialization %}


{#- dbt's own is_incremental() wants a table; in the lake every model's relation is a view over Delta. -#}
{% macro is_incremental() %}
    {%- if not execute -%}
        {{ return(false) }}
    {%- endif -%}
    {%- set relation = adapter.get_relation(this.database, this.schema, this.table) -%}
    {{ return(relation is not none and model.config.materialized == 'incremental' and not should_full_refresh()) }}
{% endmacro %}
