{#-
  on-run-end: records which build of the upstream layers (ODS, DIM, DW: they read the dataset and the task's
  settings, never the run's dates) the warehouse holds, so that the next date's build can leave them out
  (ml.warehouse.build.build_dates). The record is the var upstream_key, written only by an invocation that built
  every upstream model and ran every upstream test without a failure. Any other invocation that ran one of them
  (a failure, part of them, a hand run without the var) removes the record, so the next date builds them again.
  Only on DuckDB: a Spark build always builds every layer.
-#}
{% macro crowd_record_upstream(results) %}
    {%- if execute and target.type == 'duckdb' -%}
        {%- set upstream = [] -%}
        {%- for node in graph.nodes.values() if crowd_is_upstream(node) -%}
            {%- do upstream.append(node.unique_id) -%}
        {%- endfor -%}
        {%- set ran = [] -%}
        {%- set passed = [] -%}
        {%- for r in results if r.node.unique_id in upstream -%}
            {%- do ran.append(r.node.unique_id) -%}
            {%- if r.status in ('success', 'pass') -%}{%- do passed.append(r.node.unique_id) -%}{%- endif -%}
        {%- endfor -%}
        {%- if ran -%}
            {%- set key = var('upstream_key', none) -%}
            {%- do run_query('create schema if not exists crowd_meta') -%}
            {%- if key and passed | length == upstream | length -%}
                {%- do run_query("create or replace table crowd_meta.upstream as select '"
                                 ~ key | replace("'", "''") ~ "' as upstream_key") -%}
            {%- else -%}
                {%- do run_query('drop table if exists crowd_meta.upstream') -%}
            {%- endif -%}
            {%- do adapter.commit() -%}
        {%- endif -%}
    {%- endif -%}
{% endmacro %}

{#- An upstream node: a model of ODS, DIM or DW that is built (not ephemeral), or a data test that reads only
    those models and the sources. -#}
{% macro crowd_is_upstream(node) %}
    {%- set layers = ('ods', 'dim', 'dw') -%}
    {%- if node.resource_type == 'model' -%}
        {{ return(node.fqn[1] in layers and node.config.materialized != 'ephemeral') }}
    {%- elif node.resource_type == 'test' -%}
        {%- set parents = node.depends_on.nodes -%}
        {%- for p in parents -%}
            {%- if not (p.startswith('source.') or (p.startswith('model.') and graph.nodes[p].fqn[1] in layers)) -%}
                {{ return(false) }}
            {%- endif -%}
        {%- endfor -%}
        {{ return(parents | length > 0) }}
    {%- endif -%}
    {{ return(false) }}
{% endmacro %}
