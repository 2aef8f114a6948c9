{#- A generic test: every value present (not null) and within [min_value, max_value] (either end optional,
    each a SQL expression). The samples' keys and dates are checked against the run's own vars, so a wrong
    date, a null key or an impossible weight coming from the inputs fails the build instead of training. -#}
{% test crowd_in_range(model, column_name, min_value=none, max_value=none) %}
select {{ column_name }} as value
from {{ model }}
where {{ column_name }} is null
    {%- if min_value is not none %} or {{ column_name }} < {{ min_value }}{% endif %}
    {%- if max_value is not none %} or {{ column_name }} > {{ max_value }}{% endif %}
{% endtest %}

{#- A generic test: every date present and inside the log (after its first day, at most the day after its last:
    the forward date). A sample dated where the log has no history, or past it, comes from a wrong input or
    var; rows of earlier runs are checked too, so no run's own dates are assumed. -#}
{% test crowd_date_in_the_log(model, column_name) %}
with log as (
    select min(cast(ts as date)) as first_day, max(cast(ts as date)) as last_day from {{ ref('ods_events') }}
)
select m.{{ column_name }} as value
from {{ model }} as m cross join log
where m.{{ column_name }} is null
    or m.{{ column_name }} <= log.first_day
    or m.{{ column_name }} > cast({{ dbt.dateadd('day', 1, 'log.last_day') }} as date)
{% endtest %}
