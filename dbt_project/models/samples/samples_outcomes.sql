{%- set c = crowd_config() -%}
{%- set o = c['outcome_date'] -%}
-- How published crowds did, once the log holds their label window: at var outcome_date (the feature date of
-- crowds published earlier, `crowd outcomes`), every buyer of each target that may be ranked (dim_target_subset:
-- the item task's submission is measured against every buyer pair of the subset, as the competition was) in
-- [outcome_date, outcome_date + label_days) by the label rule (crowd_label_rows: a buy of the target; a
-- tag's rule), with in_population: whether the forward population as of that date held the pair (the same
-- query samples_forward scored it with, crowd_forward_pairs_ctes, over the events before the date, which a
-- log that grew by later days still holds as they were). The crowds are joined with it outside dbt: they are
-- the scorer's output, not a warehouse table on every engine.
-- A run without an outcome date runs the same query over no user (as of the backtest date), so that a parse of
-- the project serves every date (ml.warehouse.build.PARSE_FREE_VARS).
{%- set day = o or c['evaluation_date'] %}

with {{ crowd_forward_pairs_ctes(day, o is not none) }},

buyers as (
    select l.ds, l.user_id, l.target_id
    from ({{ crowd_label_rows(crowd_run_dates_sql([day])) }}) as l
    inner join {{ ref('dim_target_subset') }} as t on l.target_id = t.target_id
    where {{ 'true' if o else 'false' }} and l.label_buy = 1
)

select
    b.ds,
    b.target_id,
    b.user_id,
    (p.user_id is not null) as in_population
from buyers as b
left join forward_pairs as p on p.ds = b.ds and p.user_id = b.user_id and p.target_id = b.target_id
