{%- set c = crowd_config() -%}
-- The targets a sample, the evaluation set or a crowd may hold: every target, or for target item the
-- task's item subset (the Tianchi competition's item set P), read from the parquet file of item ids that
-- env CROWD_ITEM_SUBSET names (every item when it is unset). Items outside the subset still count in
-- every feature and sequence: the subset only limits what is ranked.
-- depends_on: {{ source('raw', 'item_subset') }}
select t.target_id
from {{ ref('dim_targets') }} as t
{%- if c['item_level'] %}
where t.target_id in (select cast(item_id as {{ dbt.type_bigint() }}) from {{ crowd_source('item_subset') }})
{%- endif %}
