{%- set c = crowd_config() -%}
{%- set days = (c['validation_dates'] + [c['evaluation_date']]) | select('in', c['labelled_dates']) | unique | list -%}
{%- set dates = crowd_run_dates_sql(days) -%}
-- The evaluation set, built for the evaluation date and the validation dates this run includes: the scores
-- are calibrated and the champion chosen on the validation dates' population, the one the backtest measures.
-- For a brand or a category: for each evaluated target (dim_evaluated_targets), every user active in the
-- history window, whether or not they ever touched the target (is_candidate says which did); recall@N is
-- measured over this whole population.
-- For target item: the pairs a next-day submission can be made of, every (user, item of the subset)
-- active together in the last candidate_days, as in the training candidates.
-- A run without those dates builds no rows, through the same query: a model's refs may not depend on the run's
-- dates (a parse of the project serves every date of the same settings: ml.warehouse.build.parse_key).
{%- if c['item_level'] %}
{%- set pairs %}
    select distinct h.ds, h.user_id, h.target_id, true as is_candidate, cast(1.0 as double) as inclusion_prob
    from ({{ crowd_history_rows('h.target_id is not null', dates) }}) as h
    inner join {{ ref('dim_evaluated_targets') }} as t on h.target_id = t.target_id
    where h.age <= {{ c['candidate_days'] }}
{%- endset %}
{{ crowd_sample_rows('(' ~ pairs ~ ')', dates) }}
{%- else %}
{%- set pairs %}
    select u.ds, u.user_id, t.target_id, (p.user_id is not null) as is_candidate, cast(1.0 as double) as inclusion_prob
    from (select distinct ds, user_id from {{ ref('ads_user_features') }} where {{ crowd_in_run_dates('ds', days) }}) as u
    cross join {{ ref('dim_evaluated_targets') }} as t
    left join {{ ref('ads_user_target_features') }} as p
        on p.ds = u.ds and p.user_id = u.user_id and p.target_id = t.target_id
{%- endset %}
{{ crowd_sample_rows('(' ~ pairs ~ ')', dates) }}
{%- endif %}
