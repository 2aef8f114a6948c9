-- One row per user seen in the log, with a dense index and the span of their activity.
select
    user_id,
    cast(row_number() over (order by user_id) as {{ dbt.type_int() }}) as user_index,
    min(ts) as first_ts,
    max(ts) as last_ts,
    -- a bigint on every engine (DuckDB's sum of bigints is a hugeint, Spark's a bigint)
    cast(sum(n_raw) as {{ dbt.type_bigint() }}) as n_events
from {{ ref('ods_events') }}
group by user_id
