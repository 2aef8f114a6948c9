{%- set c = crowd_config() -%}
-- Events per (user, leaf category, day) and action: the sums behind the uc_ and c_ features of target
-- item (the user's and everyone's activity in the candidate item's category). Empty for other targets,
-- whose target already is, or sits in, one category.
select
    user_id,
    category_id,
    day,
    cast(sum(case when action = 'click' then 1 else 0 end) as {{ dbt.type_int() }}) as n_click,
    cast(sum(case when action = 'collect' then 1 else 0 end) as {{ dbt.type_int() }}) as n_collect,
    cast(sum(case when action = 'cart' then 1 else 0 end) as {{ dbt.type_int() }}) as n_cart,
    cast(sum(case when action = 'buy' then 1 else 0 end) as {{ dbt.type_int() }}) as n_buy
from {{ ref('dw_events') }}
where {{ 'true' if c['item_level'] else '1 = 0' }}
group by user_id, category_id, day
