{%- set c = crowd_config() -%}
-- No feature reads ds or later: the widest-window counts are recomputed straight from the detail events
-- with ts in [ds - history_days, ds), every recency and sequence age is at least one day, and no sequence
-- holds an event older than the sequence window. On the rows of this run's dates (the others were checked
-- when their run wrote them, and a run replaces only its own dates).
with recomputed as (
    select
        f.ds, f.user_id, f.target_id, f.ub_click_{{ c['windows'][-1] }}d as feature,
        count(e.user_id) as from_events
    from {{ ref('ads_user_target_features') }} as f
    left join {{ ref('dw_click_events') }} as e
        on e.user_id = f.user_id
        and e.target_id = f.target_id
        and e.ts < f.ds
        and e.ts >= {{ dbt.dateadd('day', -c['windows'][-1], 'f.ds') }}
    where {{ crowd_in_run_dates('f.ds') }}
    group by f.ds, f.user_id, f.target_id, f.ub_click_{{ c['windows'][-1] }}d
)

select 'ub_click count differs from the events before ds' as problem, ds, user_id
from recomputed where feature <> from_events
union all
select 'recency under one day', ds, user_id
from {{ ref('ads_user_features') }} where u_recency_any < 1 and {{ crowd_in_run_dates() }}
union all
select 'recency under one day', ds, user_id
from {{ ref('ads_user_target_features') }} where ub_recency_any < 1 and {{ crowd_in_run_dates() }}
union all
select 'sequence age outside the window', ds, user_id
from {{ ref('ads_user_sequences') }}
where {{ crowd_in_run_dates() }}
    and ({{ crowd_list_min('hist_age_days') }} < 1 or {{ crowd_list_max('hist_age_days') }} > {{ c['sequence_days'] }})
