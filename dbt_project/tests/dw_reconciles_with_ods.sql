-- The four DW detail tables hold exactly the ODS events, action by action.
with ods as (
    select action, count(*) as n_rows, sum(n_raw) as n_raw from {{ ref('ods_events') }} group by action
),

dw as (
    select action, count(*) as n_rows, sum(n_raw) as n_raw from {{ ref('dw_events') }} group by action
),

daily as (
    select 'click' as action, sum(n_click) as n_rows from {{ ref('dw_user_target_daily') }}
    union all select 'collect', sum(n_collect) from {{ ref('dw_user_target_daily') }}
    union all select 'cart', sum(n_cart) from {{ ref('dw_user_target_daily') }}
    union all select 'buy', sum(n_buy) from {{ ref('dw_user_target_daily') }}
)

select ods.action, ods.n_rows, dw.n_rows as dw_rows, daily.n_rows as daily_rows
from ods
left join dw on ods.action = dw.action
left join daily on ods.action = daily.action
where dw.n_rows is null or ods.n_rows <> dw.n_rows or ods.n_raw <> dw.n_raw or ods.n_rows <> daily.n_rows
