-- One row per target (brand or category) with its main leaf category (the one holding most of its items,
-- lowest id on ties: DIN's candidate category) and a dense index for models that want one.
with item_counts as (
    select target_id, category_id, count(*) as n_items
    from {{ ref('dim_items') }}
    where target_id is not null
    group by target_id, category_id
),

ranked as (
    select
        target_id,
        category_id,
        n_items,
        row_number() over (partition by target_id order by n_items desc, category_id) as category_rank,
        sum(n_items) over (partition by target_id) as total_items
    from item_counts
)

select
    target_id,
    category_id,
    cast(total_items as {{ dbt.type_int() }}) as n_items,
    cast(row_number() over (order by target_id) as {{ dbt.type_int() }}) as target_index
from ranked
where category_rank = 1
