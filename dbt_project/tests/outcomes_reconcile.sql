{%- set c = crowd_config() -%}
{%- set o = c['outcome_date'] -%}
-- At the run's outcome date, samples_outcomes holds exactly the buyers the label rule gives, recomputed here
-- from the detail events (a buy of a rankable target in [ds, ds + label_days); for a tag, at least min_buys buy
-- events in its categories over the horizon_days ending with the window), and samples_outcome_targets counts
-- its rows. Without an outcome date it selects no row (the same query as of the backtest date, filtered out
-- whole, which both engines reduce to an empty relation, as the models run): the rows an earlier run measured
-- at that date are not this run's (read, they failed every later build).
{%- set day = o or c['evaluation_date'] %}
{%- set as_of = "cast('" ~ day ~ "' as date)" %}

with recomputed as (
    {%- if c['tag_level'] %}
    select {{ as_of }} as ds, e.user_id, t.tag_id as target_id
    from {{ ref('dw_events') }} as e
    inner join {{ ref('dim_tags') }} as t on e.category_id = t.category_id
    inner join {{ ref('dim_target_subset') }} as s on t.tag_id = s.target_id
    where e.action = 'buy'
        and e.ts >= {{ dbt.dateadd('day', c['label_days'] ~ ' - t.horizon_days', as_of) }}
        and e.ts < {{ dbt.dateadd('day', c['label_days'], as_of) }}
    group by e.user_id, t.tag_id, t.min_buys
    having count(*) >= t.min_buys
    {%- else %}
    -- depends_on: {{ ref('dim_tags') }}
    select distinct {{ as_of }} as ds, e.user_id, e.target_id
    from {{ ref('dw_events') }} as e
    inner join {{ ref('dim_target_subset') }} as s on e.target_id = s.target_id
    where e.action = 'buy'
        and e.ts >= {{ as_of }}
        and e.ts < {{ dbt.dateadd('day', c['label_days'], as_of) }}
    {%- endif %}
),

stored as (
    select ds, user_id, target_id from {{ ref('samples_outcomes') }} where ds = {{ as_of }}
),

counted as (
    select target_id, count(*) as buyers, sum(case when in_population then 1 else 0 end) as buyers_in_population
    from {{ ref('samples_outcomes') }}
    where ds = {{ as_of }}
    group by target_id
),

problems as (
    select 'buyer missing' as problem, r.ds, r.user_id, r.target_id
    from recomputed as r
    left join stored as s on s.ds = r.ds and s.user_id = r.user_id and s.target_id = r.target_id
    where s.user_id is null
    union all
    select 'not a buyer' as problem, s.ds, s.user_id, s.target_id
    from stored as s
    left join recomputed as r on s.ds = r.ds and s.user_id = r.user_id and s.target_id = r.target_id
    where r.user_id is null
    union all
    select 'target counts differ' as problem, t.ds, cast(null as {{ dbt.type_bigint() }}) as user_id, t.target_id
    from {{ ref('samples_outcome_targets') }} as t
    left join counted as n on n.target_id = t.target_id
    where t.ds = {{ as_of }}
        and (t.buyers <> coalesce(n.buyers, 0) or t.buyers_in_population <> coalesce(n.buyers_in_population, 0)
             or t.buyers_in_population > t.population)
)

select * from problems where {{ 'true' if o else 'false' }}

