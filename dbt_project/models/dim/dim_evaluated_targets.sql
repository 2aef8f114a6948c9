{%- set c = crowd_config() -%}
-- The targets the evaluation set covers: var evaluated_targets when given, else the n_evaluated_targets
-- targets with most distinct buyers in the history window before the evaluation date (point-in-time:
-- nothing on or after the evaluation date decides which targets are evaluated).
with buyers as (
    select t.target_id, count(distinct b.user_id) as n_buyers
    from {{ ref('dim_targets') }} as t
    left join {{ ref('dw_buy_events') }} as b
        on b.target_id = t.target_id
        and b.ts >= {{ dbt.dateadd('day', -c['history_days'], "cast('" ~ c['evaluation_date'] ~ "' as date)") }}
        and b.ts < cast('{{ c['evaluation_date'] }}' as date)
    group by t.target_id
),

ranked as (
    select
        target_id,
        cast(n_buyers as {{ dbt.type_int() }}) as n_buyers,
        cast(row_number() over (order by n_buyers desc, target_id) as {{ dbt.type_int() }}) as buyer_rank
    from buyers
)

select target_id, n_buyers, buyer_rank
from ranked
{% if c['evaluated_targets'] %}
where target_id in ({{ c['evaluated_targets'] | join(', ') }})
{% else %}
where buyer_rank <= {{ c['n_evaluated_targets'] }}
{% endif %}
