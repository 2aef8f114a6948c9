-- Nothing is lost in ODS: every raw event is either folded into ods_events (n_raw) or rejected, and every
-- raw item row is either in ods_items or rejected. Returns a row per table that does not reconcile.
with events as (
    select
        'events' as source_table,
        (select count(*) from {{ crowd_source('events') }}) as n_read,
        (select coalesce(sum(n_raw), 0) from {{ ref('ods_events') }})
            + (select count(*) from {{ ref('ods_event_rejects') }}) as n_accounted
),

items as (
    select
        'items' as source_table,
        (select count(*) from {{ crowd_source('items') }}) as n_read,
        (select count(*) from {{ ref('ods_items') }})
            + (select count(*) from {{ ref('ods_item_rejects') }}) as n_accounted
)

select * from events where n_read <> n_accounted
union all
select * from items where n_read <> n_accounted
