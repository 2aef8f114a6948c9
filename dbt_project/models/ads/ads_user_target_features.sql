-- user x target features at each ds, from events strictly before ds (see macros/crowd_features.sql).
with history as (
    {{ crowd_history_rows('h.target_id is not null') }}
),

aggregated as (
    select
        ds,
        user_id,
        target_id,
        {{ crowd_window_aggregates('ub') }}
    from history
    group by ds, user_id, target_id
)

select
    aggregated.*,
    {{ crowd_window_ratios('ub') }}
from aggregated
