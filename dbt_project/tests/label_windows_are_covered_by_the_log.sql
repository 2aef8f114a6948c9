{%- set c = crowd_config() -%}
-- A sample date whose label window runs past the end of the log would label late buyers as non-buyers:
-- fail instead. Coverage is checked day by day: every day of each label window must hold at least 1 % of
-- the log's average day of events, so that no stray late event (one in 2099) can stand for a missing week.
-- (Shorten the schedule with vars, or load more days.)
with daily as (
    select day, count(*) as n_events from {{ ref('dw_events') }} group by day
),

typical as (
    select avg(n_events) as n_events from daily
),

dates as (
    select distinct ds from {{ ref('samples') }}
),

window_days as (
    {%- for k in range(c['label_days']) %}
    select ds, cast({{ dbt.dateadd('day', k, 'ds') }} as date) as day from dates
    {%- if not loop.last %} union all{% endif %}
    {%- endfor %}
)

select w.ds, w.day, coalesce(d.n_events, 0) as events_that_day, t.n_events as events_on_an_average_day
from window_days as w
cross join typical as t
left join daily as d on d.day = w.day
where coalesce(d.n_events, 0) < 0.01 * t.n_events
