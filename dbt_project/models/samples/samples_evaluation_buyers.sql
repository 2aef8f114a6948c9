{%- set c = crowd_config() -%}
{%- set ev = "cast('" ~ c['evaluation_date'] ~ "' as date)" -%}
{%- set in_run = c['evaluation_date'] in c['labelled_dates'] -%}
-- Every buyer of each evaluated target in the evaluation date's label window, whether or not the
-- evaluation set scores them: the denominator of recall@N. in_population: active in the history window
-- (a row of samples_evaluation); is_candidate: touched the target in the history window. A buyer with
-- neither is one no crowd built from the history could reach, and recall@N counts them as missed.
with buyers as (
    select distinct h.user_id, h.target_id
    from {{ ref('dw_user_target_daily') }} as h
    inner join {{ ref('dim_evaluated_targets') }} as t on h.target_id = t.target_id
    where h.n_buy > 0
        and h.day >= {{ ev }}
        and h.day < cast({{ dbt.dateadd('day', c['label_days'], ev) }} as date)
),

population as (
    select distinct user_id
    from {{ ref('ads_user_features') }}
    where ds = {{ ev }}
)

select
    {{ ev }} as ds,
    b.target_id,
    b.user_id,
    (u.user_id is not null) as in_population,
    (p.user_id is not null) as is_candidate
from buyers as b
left join population as u on b.user_id = u.user_id
left join {{ ref('ads_user_target_features') }} as p
    on p.ds = {{ ev }} and p.user_id = b.user_id and p.target_id = b.target_id
-- (built only when this run includes the evaluation date: otherwise an empty relation, same columns)
where {{ 'true' if in_run else '1 = 0' }}
