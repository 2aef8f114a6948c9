-- item -> category / brand / shop, and the target entity the models rank (var target): the brand, the
-- leaf category for data with no brand, or the item itself.
{%- set target = crowd_config()['target'] %}
select
    item_id,
    category_id,
    parent_category_id,
    brand_id,
    shop_id,
    {{ {'brand': 'brand_id', 'category': 'category_id', 'item': 'item_id'}[target] }} as target_id
from {{ ref('ods_items') }}
