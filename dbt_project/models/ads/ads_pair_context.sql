{%- set c = crowd_config() -%}
-- The time context of each (user, target) pair's last interaction before ds, at the log's own resolution
-- (hours in the Tianchi mobile log): its hour of day, weekday (0 = Sunday), whether that was a weekend,
-- its action code (1 click .. 4 buy) and the hours from it to ds (at least 1). Ties in time are broken
-- by action then item, as in the sequences. Built for target item only (empty otherwise).
with recent as (
    select
        d.ds,
        e.user_id,
        e.target_id,
        e.ts,
        {{ crowd_action_code('e.action') }} as action_code,
        row_number() over (
            partition by d.ds, e.user_id, e.target_id
            order by e.ts desc, {{ crowd_action_code('e.action') }} desc, e.item_id desc
        ) as position
    from {{ ref('dw_events') }} as e
    inner join ({{ crowd_run_dates_sql() }}) as d
        on e.ts >= {{ dbt.dateadd('day', -c['history_days'], 'd.ds') }}
        and e.ts < d.ds
    where e.target_id is not null and {{ 'true' if c['item_level'] else '1 = 0' }}
)

select
    ds,
    user_id,
    target_id,
    {%- for col in crowd_context_columns() %}
    {{ crowd_context_expression(col, 'ts', 'ds', 'action_code') }} as {{ col }}{% if not loop.last %},{% endif %}
    {%- endfor %}
from recent
where position = 1
