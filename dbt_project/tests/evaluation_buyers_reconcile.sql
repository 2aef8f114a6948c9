-- The buyers of the evaluation set are exactly the in-population rows of samples_evaluation_buyers: every
-- label_buy = 1 row has a buyer row marked in_population, and every in_population buyer is a labelled row.
-- (Otherwise recall@N's denominator and the evaluation set's positives would disagree.) On the backtest
-- and on the validation dates alike: both have their evaluation set.
with positives as (
    select ds, target_id, user_id from {{ ref('samples_evaluation') }} where label_buy = 1
),

reachable as (
    select ds, target_id, user_id from {{ ref('samples_evaluation_buyers') }}
    where in_population
)

select 'positive with no buyer row' as problem, p.*
from positives as p
left join reachable as r on p.ds = r.ds and p.target_id = r.target_id and p.user_id = r.user_id
where r.user_id is null
union all
select 'in-population buyer not labelled' as problem, r.*
from reachable as r
left join positives as p on p.ds = r.ds and p.target_id = r.target_id and p.user_id = r.user_id
where p.user_id is null
