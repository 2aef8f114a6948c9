-- Raw events that cannot be used, each with its reason (see ods_events_checked).
select user_id, item_id, action, ts, reject_reason
from {{ ref('ods_events_checked') }}
where reject_reason is not null
