{%- set c = crowd_config() -%}
-- Labels are recomputed from the buy, collect and cart detail tables over [ds, ds + label_days) and must
-- match samples and samples_evaluation exactly. For a tag: at least min_buys buy events in the tag's
-- categories over the horizon_days ending with the label window. On the rows of this run's dates (the others
-- were checked when their run wrote them).
with samples as (
    select ds, user_id, target_id, label_buy, label_collect_cart from {{ ref('samples') }}
    where {{ crowd_in_run_dates() }}
    union  -- the evaluation date's pairs are in both: once each (a tag's rule counts buys)
    select ds, user_id, target_id, label_buy, label_collect_cart from {{ ref('samples_evaluation') }}
    where {{ crowd_in_run_dates() }}
),

recomputed as (
    select
        s.ds, s.user_id, s.target_id, s.label_buy, s.label_collect_cart,
        {%- if c['tag_level'] %}
        case when count(case when e.action = 'buy' then 1 end) >= max(t.min_buys) then 1 else 0 end as buy_in_window,
        max(case when e.action in ('collect', 'cart') and e.ts >= s.ds then 1 else 0 end) as collect_cart_in_window
        {%- else %}
        max(case when e.action = 'buy' then 1 else 0 end) as buy_in_window,
        max(case when e.action in ('collect', 'cart') then 1 else 0 end) as collect_cart_in_window
        {%- endif %}
    from samples as s
    {%- if c['tag_level'] %}
    inner join {{ ref('dim_tags') }} as t on t.tag_id = s.target_id
    left join {{ ref('dw_events') }} as e
        on e.user_id = s.user_id
        and e.category_id = t.category_id
        and e.ts >= {{ dbt.dateadd('day', c['label_days'] ~ ' - t.horizon_days', 's.ds') }}
        and e.ts < {{ dbt.dateadd('day', c['label_days'], 's.ds') }}
    {%- else %}
    -- depends_on: {{ ref('dim_tags') }}
    left join {{ ref('dw_events') }} as e
        on e.user_id = s.user_id
        and e.target_id = s.target_id
        and e.ts >= s.ds
        and e.ts < {{ dbt.dateadd('day', c['label_days'], 's.ds') }}
    {%- endif %}
    group by s.ds, s.user_id, s.target_id, s.label_buy, s.label_collect_cart
)

select *
from recomputed
where label_buy <> coalesce(buy_in_window, 0) or label_collect_cart <> coalesce(collect_cart_in_window, 0)
