-- Events per (user, target, day) and action: every window feature is a sum over these rows, so the
-- per-ds ADS models never rescan the event log. target_id is null for items with no target (a brandless
-- item when the target is the brand): those still count in the user's own features.
select
    user_id,
    target_id,
    day,
    cast(sum(case when action = 'click' then 1 else 0 end) as {{ dbt.type_int() }}) as n_click,
    cast(sum(case when action = 'collect' then 1 else 0 end) as {{ dbt.type_int() }}) as n_collect,
    cast(sum(case when action = 'cart' then 1 else 0 end) as {{ dbt.type_int() }}) as n_cart,
    cast(sum(case when action = 'buy' then 1 else 0 end) as {{ dbt.type_int() }}) as n_buy
from {{ ref('dw_events') }}
group by user_id, target_id, day
