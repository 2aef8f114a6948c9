{%- set c = crowd_config() -%}
-- Per user and ds, the last sequence_length behaviours of the sequence window (most recent first), as
-- parallel lists: target id (-1 for an item with no target), leaf category, action code (1 click,
-- 2 collect, 3 cart, 4 buy), age in whole days before ds (1 = the day before) and in hours (at the log's
-- resolution: an event in the last hour before ds is 1 hour old). Ties in time are
-- broken by action then item so that a rebuild gives the same lists.
with recent as (
    select
        d.ds,
        e.user_id,
        coalesce(e.target_id, -1) as target_id,
        e.category_id,
        {{ crowd_action_code('e.action') }} as action_code,
        {{ crowd_age_days('e.day', 'd.ds') }} as age_days,
        {{ dbt.datediff('e.ts', 'd.ds', 'hour') }} as age_hours,
        e.ts,
        e.item_id
    from {{ ref('dw_events') }} as e
    inner join ({{ crowd_run_dates_sql() }}) as d
        on e.ts >= {{ dbt.dateadd('day', -c['sequence_days'], 'd.ds') }}
        and e.ts < d.ds
),

ranked as (
    select
        *,
        row_number() over (
            partition by ds, user_id order by ts desc, action_code desc, item_id desc
        ) as position
    from recent
)

select
    ds,
    user_id,
    cast(count(*) as {{ dbt.type_int() }}) as hist_len,
    {{ crowd_list_agg('target_id', 'position') }} as hist_target_id,
    {{ crowd_list_agg('category_id', 'position') }} as hist_category_id,
    {{ crowd_list_agg('action_code', 'position') }} as hist_action,
    {{ crowd_list_agg('age_days', 'position') }} as hist_age_days,
    {{ crowd_list_agg('age_hours', 'position') }} as hist_age_hours
from ranked
where position <= {{ c['sequence_length'] }}
group by ds, user_id
