{%- set c = crowd_config() -%}
-- user x leaf category features at each ds (target item: the category of the candidate item), from events
-- strictly before ds. Empty for other targets.
with history as (
    {{ crowd_history_rows('true' if c['item_level'] else '1 = 0', relation=ref('dw_user_category_daily'), key='category_id') }}
),

aggregated as (
    select
        ds,
        user_id,
        category_id,
        {{ crowd_window_aggregates('uc') }}
    from history
    group by ds, user_id, category_id
)

select
    aggregated.*,
    {{ crowd_window_ratios('uc') }}
from aggregated
