-- item -> category / brand / shop, and the target entity the models rank (var target): the brand, the
-- leaf category for data with no brand, the item itself, or the tag whose categories hold the item's
-- (null for an item of no tag; a category belongs to one tag at most).
{%- set target = crowd_config()['target'] %}
-- depends_on: {{ ref('dim_tags') }}
select
    i.item_id,
    i.category_id,
    i.parent_category_id,
    i.brand_id,
    i.shop_id,
    {{ {'brand': 'i.brand_id', 'category': 'i.category_id', 'item': 'i.item_id', 'tag': 't.tag_id'}[target] }} as target_id
from {{ ref('ods_items') }} as i
{%- if target == 'tag' %}
left join (select distinct tag_id, category_id from {{ ref('dim_tags') }}) as t on i.category_id = t.category_id
{%- endif %}
