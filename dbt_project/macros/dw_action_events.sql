{#- One DW detail table per action: the ODS events of that action joined with the item dimension. -#}
{% macro dw_action_events(action) %}
select
    e.user_id,
    e.item_id,
    i.target_id,
    i.brand_id,
    i.category_id,
    i.parent_category_id,
    i.shop_id,
    e.ts,
    cast(e.ts as date) as day,
    e.n_raw
from {{ ref('ods_events') }} as e
inner join {{ ref('dim_items') }} as i on e.item_id = i.item_id
where e.action = '{{ action }}'
{% endmacro %}
