{%- set c = crowd_config() -%}
{%- set dates = (c['validation_dates'] + [c['evaluation_date']]) | select('in', c['labelled_dates']) | unique | list -%}
-- Every buyer of each evaluated target in the label window of the evaluation date and of the validation
-- dates (those this run builds), whether or not a scored set holds them: the denominator of recall@N (and
-- of the pair task's F1, whose submission size is chosen on the validation dates). in_population: active
-- in the history window (a row of samples_evaluation); is_candidate: touched the target in the last
-- candidate_days (the whole history window unless a task narrows it). A buyer with neither is one no
-- crowd built from the history could reach, and recall@N counts them as missed. For target item the
-- scored set is the candidate pairs, so a buyer pair is in the population when it is a candidate.
with run_dates as (
    {{ crowd_run_dates_sql(dates) }}
),

buyers as (
    -- the positives of the label rule (a buy of the target; a tag's rule), wherever the user is
    select l.ds, l.user_id, l.target_id
    from ({{ crowd_label_rows('select ds from run_dates') }}) as l
    inner join {{ ref('dim_evaluated_targets') }} as t on l.target_id = t.target_id
    where l.label_buy = 1
),

population as (
    select distinct f.ds, f.user_id
    from {{ ref('ads_user_features') }} as f
    inner join run_dates as d on f.ds = d.ds
)

{%- set touched = "(p.user_id is not null and p.ub_recency_any <= " ~ c['candidate_days'] ~ ")" %}
select
    b.ds,
    b.target_id,
    b.user_id,
    {{ touched if c['item_level'] else '(u.user_id is not null)' }} as in_population,
    {{ touched }} as is_candidate
from buyers as b
left join population as u on b.ds = u.ds and b.user_id = u.user_id
left join {{ ref('ads_user_target_features') }} as p
    on p.ds = b.ds and p.user_id = b.user_id and p.target_id = b.target_id
