{%- set c = crowd_config() -%}
{%- set period = c['series_period_days'] -%}
{%- set n_months = c['history_days'] // period -%}
{%- set other = c['lstm_top_categories'] -%}
-- The two-timescale LSTM's input, sparse: per user and ds, buys per {{ period }}-day period over the history
-- window (timescale 'month': 30-day months, or the whole history when it is shorter; step 0 .. {{ n_months - 1 }}, oldest first) and clicks per day over the sequence window
-- (timescale 'day', step 0 .. {{ c['sequence_days'] - 1 }}, oldest first), by category slot
-- (dim_top_categories; slot {{ other }} holds every other category). Only non-zero cells are stored.
with slots as (
    select category_id, slot from {{ ref('dim_top_categories') }}
),

cells as (
    select
        d.ds,
        b.user_id,
        'month' as timescale,
        {{ n_months - 1 }} - cast(floor(({{ crowd_age_days('b.day', 'd.ds') }} - 1) / {{ period }}) as {{ dbt.type_int() }}) as step,
        coalesce(s.slot, {{ other }}) as slot
    from {{ ref('dw_buy_events') }} as b
    inner join ({{ crowd_run_dates_sql() }}) as d
        on b.day >= cast({{ dbt.dateadd('day', -period * n_months, 'd.ds') }} as date)
        and b.day < d.ds
    left join slots as s on b.category_id = s.category_id

    union all

    select
        d.ds,
        k.user_id,
        'day' as timescale,
        {{ c['sequence_days'] }} - {{ crowd_age_days('k.day', 'd.ds') }} as step,
        coalesce(s.slot, {{ other }}) as slot
    from {{ ref('dw_click_events') }} as k
    inner join ({{ crowd_run_dates_sql() }}) as d
        on k.day >= cast({{ dbt.dateadd('day', -c['sequence_days'], 'd.ds') }} as date)
        and k.day < d.ds
    left join slots as s on k.category_id = s.category_id
)

select
    ds,
    user_id,
    timescale,
    cast(step as {{ dbt.type_int() }}) as step,
    cast(slot as {{ dbt.type_int() }}) as slot,
    cast(count(*) as {{ dbt.type_int() }}) as n
from cells
group by ds, user_id, timescale, step, slot
