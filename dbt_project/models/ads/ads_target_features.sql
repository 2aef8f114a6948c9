-- Target (brand or category) features at each ds, over all users, from events strictly before ds.
with history as (
    {{ crowd_history_rows('h.target_id is not null') }}
),

aggregated as (
    select
        ds,
        target_id,
        {{ crowd_window_aggregates('b') }}
    from history
    group by ds, target_id
)

select
    aggregated.*,
    {{ crowd_window_ratios('b') }}
from aggregated
