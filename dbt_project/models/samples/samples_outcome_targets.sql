{%- set c = crowd_config() -%}
{%- set o = c['outcome_date'] -%}
-- Per target of the forward population at var outcome_date: the population's pairs, the target's buyers in the
-- label window and those of them the population held (samples_outcomes), a row for every target, those with
-- no buyer too. `crowd outcomes` takes the base rate a crowd's lift is measured against from it, and checks
-- the population against the one the crowds were scored on (a log whose days before the date changed since,
-- or other population settings, would measure crowds against another population).
{%- set day = o or c['evaluation_date'] %}

with {{ crowd_forward_pairs_ctes(day, o is not none) }},

population as (
    select ds, target_id, count(*) as population
    from forward_pairs
    group by ds, target_id
),

buyers as (
    select
        ds,
        target_id,
        count(*) as buyers,
        sum(case when in_population then 1 else 0 end) as buyers_in_population
    from {{ ref('samples_outcomes') }}
    where {{ crowd_in_run_dates('ds', [day]) }}
    group by ds, target_id
)

select
    p.ds,
    p.target_id,
    cast(p.population as {{ dbt.type_bigint() }}) as population,
    cast(coalesce(b.buyers, 0) as {{ dbt.type_bigint() }}) as buyers,
    cast(coalesce(b.buyers_in_population, 0) as {{ dbt.type_bigint() }}) as buyers_in_population
from population as p
left join buyers as b on p.ds = b.ds and p.target_id = b.target_id
