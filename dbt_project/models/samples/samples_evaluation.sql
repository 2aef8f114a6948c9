{%- set c = crowd_config() -%}
{%- set in_run = c['evaluation_date'] in c['labelled_dates'] -%}
{%- set dates = crowd_run_dates_sql([c['evaluation_date']]) -%}
-- The evaluation set, built when the run includes the evaluation date: for each evaluated target
-- (dim_evaluated_targets), every user active in the history window, whether or not they ever touched the
-- target (is_candidate says which did). recall@N is measured over this whole population.
{%- if in_run %}
{{ crowd_sample_rows(
    '(select u.ds, u.user_id, t.target_id, (p.user_id is not null) as is_candidate '
    ~ 'from (select distinct ds, user_id from ' ~ ref('ads_user_features') ~ ' where ds = cast(\'' ~ c['evaluation_date'] ~ '\' as date)) as u '
    ~ 'cross join ' ~ ref('dim_evaluated_targets') ~ ' as t '
    ~ 'left join ' ~ ref('ads_user_target_features') ~ ' as p on p.ds = u.ds and p.user_id = u.user_id and p.target_id = t.target_id)',
    dates
) }}
{%- else %}
-- (not this run: an empty relation with the same columns)
select * from (
{{ crowd_sample_rows('(select * from ' ~ ref('samples_candidates') ~ ' where 1 = 0)', crowd_run_dates_sql()) }}
) as no_rows
where 1 = 0
{%- endif %}
