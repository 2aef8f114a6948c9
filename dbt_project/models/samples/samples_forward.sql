{%- set c = crowd_config() -%}
{%- set f = c['forward_date'] -%}
-- The forward population, built when the run has a forward_date: the (user, target) pairs the task's
-- champion scores to publish the coming period's crowds. Features as of forward_date (events strictly
-- before it), no labels: the label window may run past the end of the log. Users are those active in the
-- crowd_active_days before forward_date; crowd_population 'touched' pairs each with the targets (of
-- dim_target_subset) they were active on in the last candidate_days, 'evaluated' with every top target as
-- of forward_date.
-- A run without a forward date runs the same query over no user (as of the backtest date, any valid one):
-- the model refs the same models either way, so a parse of the project serves the forward date's build too
-- (ml.warehouse.build.PARSE_FREE_VARS), and both engines' optimisers reduce a constant false filter to an
-- empty relation.
{%- set day = f or c['evaluation_date'] %}
{%- set as_of = "cast('" ~ day ~ "' as date)" %}
{%- set dates = crowd_run_dates_sql([day]) %}

with active_users as (
    select distinct user_id
    from {{ ref('dw_user_target_daily') }}
    where {{ 'true' if f else 'false' }}
        and day >= cast({{ dbt.dateadd('day', -c['crowd_active_days'], as_of) }} as date)
        and day < {{ as_of }}
),

touched as (
    select distinct h.ds, h.user_id, h.target_id
    from ({{ crowd_history_rows('h.target_id is not null', dates) }}) as h
    inner join active_users as a on h.user_id = a.user_id
    inner join {{ ref('dim_target_subset') }} as s on h.target_id = s.target_id
    where h.age <= {{ c['candidate_days'] }}
),

{%- if c['crowd_population'] == 'touched' %}

pairs as (
    select ds, user_id, target_id, true as is_candidate, cast(1.0 as double) as inclusion_prob from touched
)
{%- else %}

top_targets as (
    {{ crowd_top_targets(day) }}
),

pairs as (
    select {{ as_of }} as ds, a.user_id, t.target_id, (p.user_id is not null) as is_candidate,
        cast(1.0 as double) as inclusion_prob
    from active_users as a
    cross join top_targets as t
    left join touched as p on p.user_id = a.user_id and p.target_id = t.target_id
)
{%- endif %}

{{ crowd_sample_rows('pairs', dates, with_labels=false) }}
