-- Raw item rows that cannot be used, each with its reason (see ods_items_checked).
select item_id, category_id, parent_category_id, brand_id, shop_id, reject_reason
from {{ ref('ods_items_checked') }}
where reject_reason is not null
