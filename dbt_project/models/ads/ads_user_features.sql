-- User features at each ds, over every target (and brandless items), from events strictly before ds.
with history as (
    {{ crowd_history_rows() }}
),

aggregated as (
    select
        ds,
        user_id,
        {{ crowd_window_aggregates('u') }}
    from history
    group by ds, user_id
)

select
    aggregated.*,
    {{ crowd_window_ratios('u') }}
from aggregated
