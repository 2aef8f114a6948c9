{#-
  The few operations with no dbt cross-database macro, dispatched on the adapter: a port to Spark or
  MaxCompute implements `<adapter>__crowd_*` here and leaves the models alone.
-#}

{#- An ordered list aggregate (behaviour sequences). -#}
{% macro crowd_list_agg(expr, order_by) %}
    {{ return(adapter.dispatch('crowd_list_agg', 'purchase_crowd')(expr, order_by)) }}
{% endmacro %}

{% macro default__crowd_list_agg(expr, order_by) %}array_agg({{ expr }} order by {{ order_by }}){% endmacro %}

{% macro duckdb__crowd_list_agg(expr, order_by) %}list({{ expr }} order by {{ order_by }}){% endmacro %}

{#- Spark 3.5 has no ordered aggregate: collect (key, value) structs, sort them by key, keep the values. -#}
{% macro spark__crowd_list_agg(expr, order_by) -%}
    transform(array_sort(collect_list(named_struct('k', {{ order_by }}, 'v', {{ expr }}))), s -> s.v)
{%- endmacro %}

{#- A deterministic pseudo-random bucket in [0, n) of some columns (negative sampling): the first 60 bits of the
    md5 of the values joined by '|', so every engine draws the same users (DuckDB's own hash is another
    function on Spark). -#}
{% macro crowd_bucket(exprs, n) %}
    {{ return(adapter.dispatch('crowd_bucket', 'purchase_crowd')(exprs, n)) }}
{% endmacro %}

{% macro default__crowd_bucket(exprs, n) %}
    {%- set text = [] -%}
    {%- for e in exprs -%}
        {%- if not loop.first -%}{%- do text.append("'|'") -%}{%- endif -%}
        {%- do text.append('cast(' ~ e ~ ' as ' ~ dbt.type_string() ~ ')') -%}
    {%- endfor -%}
    ({{ crowd_hex_to_bigint('substr(md5(' ~ dbt.concat(text) ~ '), 1, 15)') }} % cast({{ n }} as {{ dbt.type_bigint() }}))
{% endmacro %}

{#- A hexadecimal text of at most 15 digits as a bigint. -#}
{% macro crowd_hex_to_bigint(hex) %}
    {{ return(adapter.dispatch('crowd_hex_to_bigint', 'purchase_crowd')(hex)) }}
{% endmacro %}

{% macro default__crowd_hex_to_bigint(hex) %}
    {{ exceptions.raise_compiler_error("crowd_hex_to_bigint has no implementation for the adapter '" ~ adapter.type() ~ "': add one in macros/crowd_portable.sql") }}
{% endmacro %}

{% macro duckdb__crowd_hex_to_bigint(hex) %}cast(('0x' || {{ hex }}) as bigint){% endmacro %}

{% macro spark__crowd_hex_to_bigint(hex) %}cast(conv({{ hex }}, 16, 10) as bigint){% endmacro %}

{#- Whole days from an earlier date or timestamp to a later date, counted in calendar days (a bigint on every
    engine: Spark's datediff is an int). -#}
{% macro crowd_age_days(earlier, later) %}cast({{ dbt.datediff('cast(' ~ earlier ~ ' as date)', later, 'day') }} as {{ dbt.type_bigint() }}){% endmacro %}

{#- The code of an action in sequences: 1 click, 2 collect, 3 cart, 4 buy (0 is the models' padding). -#}
{% macro crowd_action_code(column) %}
    case {{ column }} when 'click' then 1 when 'collect' then 2 when 'cart' then 3 when 'buy' then 4 end
{% endmacro %}

{#- The smallest and largest element of a list column (checks on sequences). -#}
{% macro crowd_list_min(column) %}{{ return(adapter.dispatch('crowd_list_min', 'purchase_crowd')(column)) }}{% endmacro %}
{% macro default__crowd_list_min(column) %}array_min({{ column }}){% endmacro %}
{% macro duckdb__crowd_list_min(column) %}list_min({{ column }}){% endmacro %}
{% macro crowd_list_max(column) %}{{ return(adapter.dispatch('crowd_list_max', 'purchase_crowd')(column)) }}{% endmacro %}
{% macro default__crowd_list_max(column) %}array_max({{ column }}){% endmacro %}
{% macro duckdb__crowd_list_max(column) %}list_max({{ column }}){% endmacro %}

{#- The hour of day (0 .. 23) and the day of week (0 = Sunday .. 6) of a timestamp (the pair's time context). -#}
{% macro crowd_hour_of_day(ts) %}{{ return(adapter.dispatch('crowd_hour_of_day', 'purchase_crowd')(ts)) }}{% endmacro %}
{% macro default__crowd_hour_of_day(ts) %}extract(hour from {{ ts }}){% endmacro %}
{% macro crowd_day_of_week(ts) %}{{ return(adapter.dispatch('crowd_day_of_week', 'purchase_crowd')(ts)) }}{% endmacro %}
{% macro default__crowd_day_of_week(ts) %}extract(dow from {{ ts }}){% endmacro %}
{% macro spark__crowd_day_of_week(ts) %}(dayofweek({{ ts }}) - 1){% endmacro %}

{#- A raw table of the dataset (models/ods/sources.yml): the source relation itself on DuckDB (read through its
    external_location), the parquet files at meta.path on Spark. source() is called on every adapter so the
    lineage stays in the manifest. -#}
{% macro crowd_source(table) %}
    {%- set relation = source('raw', table) -%}
    {{ return(adapter.dispatch('crowd_source', 'purchase_crowd')(table, relation)) }}
{% endmacro %}

{% macro default__crowd_source(table, relation) %}{{ return(relation) }}{% endmacro %}

{% macro spark__crowd_source(table, relation) %}
    {%- if not execute -%}{{ return(relation) }}{%- endif -%}
    {%- set path = graph.sources['source.purchase_crowd.raw.' ~ table].meta['path'] -%}
    {{ return('parquet.`' ~ path | replace('`', '``') ~ '`') }}
{% endmacro %}
