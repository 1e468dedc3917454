{#-
    The final select of an incremental model merged on its unique_key (macros/materializations/lake.sql).

    A merge replaces the rows whose key is in the new rows and inserts the others, so a key that a run
    recomputes to nothing (every bronze record of it was removed) would stay in the target. `recomputed`
    names the relation (usually a CTE) of every key the run recomputed; on an incremental run each of them
    that `rows` has no row for comes out as a tombstone, its key with `_lake_delete` true, and the merge
    deletes it (lib/dbt_plugins/lake.py). Any other build writes `rows` as they are.

    `recomputed` must hold the keys the target attributes to the run's window as well as those bronze
    changed inside it: a record removed from bronze changes nothing inside the window that the new rows
    could show.
-#}
{% macro select_with_deletes(rows, recomputed) -%}
    {%- if is_incremental() -%}
        {%- set unique_key = config.get('unique_key') -%}
        {%- set keys = ([unique_key] if unique_key is string else unique_key) | join(', ') -%}
        select *, false as _lake_delete,
        from {{ rows }}

        union all by name

        select {{ keys }}, true as _lake_delete,
        from {{ recomputed }}
        anti join {{ rows }} using ({{ keys }})
    {%- else -%}
        select * from {{ rows }}
    {%- endif -%}
{%- endmacro %}

{#-
    Like select_with_deletes, but sends the merge only what changed, so that it rewrites only the Delta files
    holding rows that did: `rows` are the recomputed rows of the keys the run recomputed, `existing` the target's
    current rows of those keys (every column, as the target stores them). A row equal to its existing one is
    left out; a key of `existing` that `rows` has no row for becomes a tombstone. Any other build writes `rows`
    as they are.
-#}
{% macro select_changes_with_deletes(rows, existing) -%}
    {%- if is_incremental() -%}
        {%- set unique_key = config.get('unique_key') -%}
        {%- set keys = ([unique_key] if unique_key is string else unique_key) | join(', ') -%}
        select *, false as _lake_delete,
        from (
            select * from {{ rows }}
            except
            select * from {{ existing }}
        ) as changed

        union all by name

        select {{ keys }}, true as _lake_delete,
        from {{ existing }}
        anti join {{ rows }} using ({{ keys }})
    {%- else -%}
        select * from {{ rows }}
    {%- endif -%}
{%- endmacro %}

{#-
    The final select of a merged model that finds what changed from narrow columns and reads whole rows only
    where it must (customers_history, dim_customers): `changed` are whole rows to replace or insert (already
    compared with the stored ones), `ends` the keys whose `partial_update_columns` alone changed, with those
    columns (the lake plugin updates only them; none for a model without such updates), `removed` the keys the
    run recomputed to nothing. Any other build writes `rows` as they are.
-#}
{% macro select_changes_with_ends(rows, changed, ends, removed) -%}
    {%- if is_incremental() -%}
        {%- set partial = ', false as _lake_partial' if ends else '' %}
        select *, false as _lake_delete{{ partial }},
        from {{ changed }}
        {%- if ends %}

        union all by name

        select *, false as _lake_delete, true as _lake_partial,
        from {{ ends }}
        {%- endif %}

        union all by name

        select *, true as _lake_delete{{ partial }},
        from {{ removed }}
    {%- else -%}
        select * from {{ rows }}
    {%- endif -%}
{%- endmacro %}
