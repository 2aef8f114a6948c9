{{ config(materialized='ephemeral') }}
-- Every raw event with the reason it cannot be used (null when it can). ods_events keeps the good ones,
-- ods_event_rejects the others, so raw = sum(ods_events.n_raw) + count(ods_event_rejects), always.
with raw_events as (
    select
        cast(user_id as {{ dbt.type_bigint() }}) as user_id,
        cast(item_id as {{ dbt.type_bigint() }}) as item_id,
        cast(action as {{ dbt.type_string() }}) as action,
        cast(ts as {{ dbt.type_timestamp() }}) as ts
    from {{ crowd_source('events') }}
),

known_items as (
    select distinct item_id from {{ ref('ods_items') }}
)

select
    e.user_id,
    e.item_id,
    e.action,
    e.ts,
    case
        when e.user_id is null then 'missing user_id'
        when e.item_id is null then 'missing item_id'
        when e.ts is null then 'missing ts'
        when e.action is null or e.action not in ('click', 'collect', 'cart', 'buy') then 'unknown action'
        when k.item_id is null then 'item not in the item table'
    end as reject_reason
from raw_events as e
left join known_items as k on e.item_id = k.item_id
