{%- set c = crowd_config() -%}
{%- set f = c['forward_date'] -%}
-- The forward population, built when the run has a forward_date: the (user, target) pairs the task's
-- champion scores to publish the coming period's crowds. Features as of forward_date (events strictly
-- before it), no labels: the label window may run past the end of the log. Users are those active in the
-- crowd_active_days before forward_date; crowd_population 'touched' pairs each with the targets (of
-- dim_target_subset) they were active on in the last candidate_days, 'evaluated' with every top target as
-- of forward_date (crowd_forward_pairs_ctes, which samples_outcomes reads the same population with).
-- A run without a forward date runs the same query over no user (as of the backtest date, any valid one):
-- the model refs the same models either way, so a parse of the project serves the forward date's build too
-- (ml.warehouse.build.PARSE_FREE_VARS), and both engines' optimisers reduce a constant false filter to an
-- empty relation.
{%- set day = f or c['evaluation_date'] %}
{%- set dates = crowd_run_dates_sql([day]) %}

with {{ crowd_forward_pairs_ctes(day, f is not none) }}

{{ crowd_sample_rows('forward_pairs', dates, with_labels=false) }}
