{%- set c = crowd_config() -%}
-- The leaf categories that get their own slot in the two-timescale LSTM series: the most active ones
-- before the first sample date (so every ds shares one layout and no ds sees its own future).
-- Slots 0 .. K-1; every other category shares slot K.
with activity as (
    select category_id, count(*) as n_events
    from {{ ref('dw_events') }}
    where ts < cast('{{ c['first_sample_date'] }}' as date)
    group by category_id
),

ranked as (
    select category_id, n_events, row_number() over (order by n_events desc, category_id) as activity_rank
    from activity
)

select
    category_id,
    cast(n_events as {{ dbt.type_bigint() }}) as n_events,
    cast(activity_rank - 1 as {{ dbt.type_int() }}) as slot
from ranked
where activity_rank <= {{ c['lstm_top_categories'] }}
