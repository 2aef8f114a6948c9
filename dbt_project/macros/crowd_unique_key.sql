{#- A generic test: the columns together identify a row (dbt_utils' unique_combination_of_columns, without
    needing `dbt deps`, which cannot reach the package hub offline). Null keys compare equal here. -#}
{% test crowd_unique_key(model, columns) %}
select {{ columns | join(', ') }}, count(*) as n_rows
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}
