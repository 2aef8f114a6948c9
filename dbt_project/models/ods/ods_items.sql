-- The item table, one row per item id.
select item_id, category_id, parent_category_id, brand_id, shop_id
from {{ ref('ods_items_checked') }}
where reject_reason is null
