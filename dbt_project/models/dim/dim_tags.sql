{%- set c = crowd_config() -%}
-- The tags of a task with target tag (var tags), one row per tag and leaf category: the rule that defines
-- it (min_buys buys in its categories in the label window, or in the horizon_days ending with it). Empty
-- for other targets.
{%- if c['tags'] %}
{%- for t in c['tags'] %}
{%- for cat in t['categories'] %}
select
    cast({{ t['tag_id'] }} as {{ dbt.type_bigint() }}) as tag_id,
    cast('{{ t['name'] }}' as {{ dbt.type_string() }}) as tag_name,
    cast({{ cat }} as {{ dbt.type_bigint() }}) as category_id,
    cast({{ t['min_buys'] }} as {{ dbt.type_int() }}) as min_buys,
    cast({{ t['horizon_days'] if t['horizon_days'] is not none else c['label_days'] }} as {{ dbt.type_int() }}) as horizon_days
{% if not loop.last %}union all{% endif %}
{%- endfor %}
{% if not loop.last %}union all{% endif %}
{%- endfor %}
{%- else %}
select
    cast(null as {{ dbt.type_bigint() }}) as tag_id, cast(null as {{ dbt.type_string() }}) as tag_name,
    cast(null as {{ dbt.type_bigint() }}) as category_id, cast(null as {{ dbt.type_int() }}) as min_buys,
    cast(null as {{ dbt.type_int() }}) as horizon_days
where 1 = 0
{%- endif %}
