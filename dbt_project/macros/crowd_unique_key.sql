{#- A generic test: the columns together identify a row (dbt_utils' unique_combination_of_columns, without
    needing `dbt deps`, which cannot reach the package hub offline). Null keys compare equal here. A key with
    ds is checked on the rows of this run's dates: a run replaces only its own dates, and the others were checked
    when their run wrote them. -#}
{% test crowd_unique_key(model, columns) %}
select {{ columns | join(', ') }}, count(*) as n_rows
from {{ model }}
{%- if 'ds' in columns %}
where {{ crowd_in_run_dates('ds') }}
{%- endif %}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}
