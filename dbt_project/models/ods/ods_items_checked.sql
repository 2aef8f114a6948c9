{{ config(materialized='ephemeral') }}
-- Every raw item row with the reason it cannot be used. An item id listed twice keeps one row chosen
-- deterministically (lowest category, brand, shop); the other copies are rejected as duplicates.
with raw_items as (
    select
        cast(item_id as {{ dbt.type_bigint() }}) as item_id,
        cast(category_id as {{ dbt.type_bigint() }}) as category_id,
        cast(parent_category_id as {{ dbt.type_bigint() }}) as parent_category_id,
        cast(brand_id as {{ dbt.type_bigint() }}) as brand_id,
        cast(shop_id as {{ dbt.type_bigint() }}) as shop_id
    from {{ crowd_source('items') }}
),

ranked as (
    select
        *,
        row_number() over (
            partition by item_id order by category_id, brand_id, shop_id, parent_category_id
        ) as copy_number
    from raw_items
)

select
    item_id, category_id, parent_category_id, brand_id, shop_id,
    case
        when item_id is null then 'missing item_id'
        when category_id is null then 'missing category_id'
        when copy_number > 1 then 'duplicate item_id'
    end as reject_reason
from ranked
