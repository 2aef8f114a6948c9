-- Canonical events, typed and deduplicated. Dedup rule: rows identical in (user, item, action, ts)
-- become one row whose n_raw counts them, so nothing is lost (Tianchi's hour-resolution repeats).
select
    cast(user_id as bigint) as user_id,
    cast(item_id as bigint) as item_id,
    cast(action as varchar) as action,
    cast(ts as timestamp) as ts,
    count(*) as n_raw
from {{ source('raw', 'events') }}
group by 1, 2, 3, 4
