{%- set c = crowd_config() -%}
-- Labels are recomputed from the buy, collect and cart detail tables over [ds, ds + label_days) and must
-- match samples and samples_evaluation exactly.
with samples as (
    select ds, user_id, target_id, label_buy, label_collect_cart from {{ ref('samples') }}
    union all
    select ds, user_id, target_id, label_buy, label_collect_cart from {{ ref('samples_evaluation') }}
),

recomputed as (
    select
        s.ds, s.user_id, s.target_id, s.label_buy, s.label_collect_cart,
        max(case when e.action = 'buy' then 1 else 0 end) as buy_in_window,
        max(case when e.action in ('collect', 'cart') then 1 else 0 end) as collect_cart_in_window
    from samples as s
    left join {{ ref('dw_events') }} as e
        on e.user_id = s.user_id
        and e.target_id = s.target_id
        and e.ts >= s.ds
        and e.ts < {{ dbt.dateadd('day', c['label_days'], 's.ds') }}
    group by s.ds, s.user_id, s.target_id, s.label_buy, s.label_collect_cart
)

select *
from recomputed
where label_buy <> coalesce(buy_in_window, 0) or label_collect_cart <> coalesce(collect_cart_in_window, 0)
