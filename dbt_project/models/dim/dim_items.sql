-- item -> category / brand / shop, and the target entity the models rank (brand by default; the leaf
-- category for data with no brand: var target).
select
    item_id,
    category_id,
    parent_category_id,
    brand_id,
    shop_id,
    {{ 'brand_id' if crowd_config()['target'] == 'brand' else 'category_id' }} as target_id
from {{ ref('ods_items') }}
