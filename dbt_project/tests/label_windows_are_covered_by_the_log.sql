{%- set c = crowd_config() -%}
-- A sample date whose label window runs past the end of the log would label late buyers as non-buyers:
-- fail instead. (Shorten the schedule with vars, or load more days.)
with last_day as (
    select max(day) as day from {{ ref('dw_events') }}
)

select s.ds, l.day as last_day_of_log
from (select distinct ds from {{ ref('samples') }}) as s
cross join last_day as l
where cast({{ dbt.dateadd('day', c['label_days'] - 1, 's.ds') }} as date) > l.day
