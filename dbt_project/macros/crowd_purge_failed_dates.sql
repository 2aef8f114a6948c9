{#-
  on-run-end: when a model or a test of this invocation failed, the rows of this run's dates are deleted
  from every per-date (incremental) table, so that a failed build never leaves rows a later build, an
  export or a training could read (an all-zero-label week built past the end of the log used to poison
  every build after it). The dates are rebuilt once the cause is fixed; the other dates are untouched.
-#}
{% macro crowd_purge_failed_dates(results) %}
    {%- if execute -%}
        {%- set failed = [] -%}
        {%- for r in results if r.status in ('error', 'fail', 'runtime error') -%}
            {%- do failed.append(r.node.name) -%}
        {%- endfor -%}
        {%- set dates = crowd_config()['run_dates'] -%}
        {%- if failed and dates -%}
            {%- set purged = [] -%}
            {%- for node in graph.nodes.values()
                if node.resource_type == 'model' and node.config.materialized == 'incremental' -%}
                {%- set relation = adapter.get_relation(database=node.database, schema=node.schema,
                                                        identifier=node.alias) -%}
                {%- if relation is not none -%}
                    {%- do run_query(crowd_delete_dates_sql(relation, dates)) -%}
                    {%- do purged.append(node.name) -%}
                {%- endif -%}
            {%- endfor -%}
            {%- if purged -%}
                {%- do log('crowd: ' ~ failed | join(', ') ~ ' failed: the rows of ds ' ~ dates | join(', ')
                           ~ ' were removed from ' ~ purged | length ~ ' per-date tables; rebuild them once fixed',
                           info=true) -%}
                {%- do adapter.commit() if target.type != 'spark' -%}
            {%- endif -%}
        {%- endif -%}
    {%- endif -%}
{% endmacro %}

{#- The statement that removes the rows of some dates from a per-date table: a delete, or on Spark (whose parquet
    tables take no DELETE) dropping the tables' ds partitions. -#}
{% macro crowd_delete_dates_sql(relation, dates) %}
    {{ return(adapter.dispatch('crowd_delete_dates_sql', 'purchase_crowd')(relation, dates)) }}
{% endmacro %}

{% macro default__crowd_delete_dates_sql(relation, dates) %}
    {{ return('delete from ' ~ relation ~ ' where ' ~ crowd_in_run_dates('ds', dates)) }}
{% endmacro %}

{% macro spark__crowd_delete_dates_sql(relation, dates) %}
    {%- set partitions = [] -%}
    {%- for d in dates -%}{%- do partitions.append("partition (ds = date '" ~ d ~ "')") -%}{%- endfor -%}
    {{ return('alter table ' ~ relation ~ ' drop if exists ' ~ partitions | join(', ')) }}
{% endmacro %}
