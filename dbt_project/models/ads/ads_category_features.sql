{%- set c = crowd_config() -%}
-- Leaf category features at each ds over all users (target item: the candidate item's category's
-- popularity and conversion), from events strictly before ds. Empty for other targets.
with history as (
    {{ crowd_history_rows('true' if c['item_level'] else '1 = 0', relation=ref('dw_user_category_daily'), key='category_id') }}
),

aggregated as (
    select
        ds,
        category_id,
        {{ crowd_window_aggregates('c') }}
    from history
    group by ds, category_id
)

select
    aggregated.*,
    {{ crowd_window_ratios('c') }}
from aggregated
