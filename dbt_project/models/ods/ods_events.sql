-- Canonical events, typed and deduplicated. Dedup rule: rows identical in (user, item, action, ts)
-- become one row whose n_raw counts them, so nothing is lost (Tianchi's hour-resolution repeats).
-- Features count these distinct rows; n_raw keeps the raw multiplicity for reconciliation.
select
    user_id,
    item_id,
    action,
    ts,
    count(*) as n_raw
from {{ ref('ods_events_checked') }}
where reject_reason is null
group by user_id, item_id, action, ts
