{#-
  The ADS feature columns, generated from the windows so that adding a window is one var, and so that the
  samples' feature join, the exports and the pandas reference (ml/warehouse/reference.py) agree on names.
  Prefixes: u (user), b (target: brand, category or item), ub (user x target); for target item also
  c (the item's leaf category) and uc (user x that category).

  From a relation with one row per (key, day) holding `age` (whole days before ds, >= 1), `day`,
  n_click / n_collect / n_cart / n_buy, user_id and target_id:
    {p}_{action}_{w}d          events of that action in the last w days
    u_{action}_day{k}          (target item) events of that action on the k-th day before ds, k = 1 .. 7:
                               the user's last week day by day (7 x 4 counts)
    {p}_active_days_{w}d       (u, ub, uc) distinct active days in the last w days, for w > 1
    {p}_targets_{w}d           (u) distinct targets touched, for w > 1
    {p}_users_{w}d, {p}_buyers_{w}d   (b, c) distinct users with any event / with a buy, for w > 1
    {p}_recency_{action|any}   (u, ub, uc) days since the last such event in the history window, null if none
    {p}_{cart,buy}_rate_{w}d   cart / (click + 1), buy / (click + 1), for w >= 7
    {p}_buy_per_cart_{w}d      buy / (cart + 1), for w >= 7
-#}

{% macro crowd_feature_columns(prefix) %}
    {%- set c = crowd_config() -%}
    {%- set columns = [] -%}
    {%- for a in c['actions'] -%}{%- for w in c['windows'] -%}
        {%- do columns.append({'name': prefix ~ '_' ~ a ~ '_' ~ w ~ 'd', 'kind': 'count'}) -%}
    {%- endfor -%}{%- endfor -%}
    {%- if prefix == 'u' -%}{%- for a in c['actions'] -%}{%- for k in crowd_daily_count_days() -%}
        {%- do columns.append({'name': 'u_' ~ a ~ '_day' ~ k, 'kind': 'count'}) -%}
    {%- endfor -%}{%- endfor -%}{%- endif -%}
    {%- for w in c['windows'] if w > 1 -%}
        {%- if prefix in ['u', 'ub', 'uc'] -%}{%- do columns.append({'name': prefix ~ '_active_days_' ~ w ~ 'd', 'kind': 'count'}) -%}{%- endif -%}
        {%- if prefix == 'u' -%}{%- do columns.append({'name': 'u_targets_' ~ w ~ 'd', 'kind': 'count'}) -%}{%- endif -%}
        {%- if prefix in ['b', 'c'] -%}
            {%- do columns.append({'name': prefix ~ '_users_' ~ w ~ 'd', 'kind': 'count'}) -%}
            {%- do columns.append({'name': prefix ~ '_buyers_' ~ w ~ 'd', 'kind': 'count'}) -%}
        {%- endif -%}
    {%- endfor -%}
    {%- if prefix in ['u', 'ub', 'uc'] -%}
        {%- for a in c['actions'] + ['any'] -%}{%- do columns.append({'name': prefix ~ '_recency_' ~ a, 'kind': 'recency'}) -%}{%- endfor -%}
    {%- endif -%}
    {%- for w in c['windows'] if w >= 7 -%}
        {%- for r in ['cart_rate', 'buy_rate', 'buy_per_cart'] -%}
            {%- do columns.append({'name': prefix ~ '_' ~ r ~ '_' ~ w ~ 'd', 'kind': 'ratio'}) -%}
        {%- endfor -%}
    {%- endfor -%}
    {{ return(columns) }}
{% endmacro %}

{#- The aggregates in the order of crowd_feature_columns, each {'name', 'expr', 'over'}: over none, an aggregate
    of the history rows grouped by the caller's keys; over a column X, of crowd_distinct_rows(X) (one row per key
    and distinct X, with the X's first `age` and `buy_age` in the window), grouped by the same keys, and the
    entry's 'age' says which of the two it counts within the window.

    A distinct count as count(distinct case when age <= w then X end) keeps a set of X per group and window, and
    took most of the ADS time (the user features 1.1 s of 1.4 at 10M events); counting the rows of the distinct X
    whose first age is within w is the same number. Where the history rows are already one per X within a
    group (the active days of a user x target: the daily table is unique per user, key and day), it is a count
    of the rows themselves. -#}
{% macro crowd_window_aggregate_list(prefix) %}
    {%- set c = crowd_config() -%}
    {%- set int = dbt.type_int() -%}
    {%- set aggs = [] -%}
    {%- for a in c['actions'] -%}{%- for w in c['windows'] -%}
        {%- do aggs.append({'name': prefix ~ '_' ~ a ~ '_' ~ w ~ 'd', 'over': none,
                            'expr': 'cast(sum(case when age <= ' ~ w ~ ' then n_' ~ a ~ ' else 0 end) as ' ~ int ~ ')'}) -%}
    {%- endfor -%}{%- endfor -%}
    {%- if prefix == 'u' -%}{%- for a in c['actions'] -%}{%- for k in crowd_daily_count_days() -%}
        {%- do aggs.append({'name': 'u_' ~ a ~ '_day' ~ k, 'over': none,
                            'expr': 'cast(sum(case when age = ' ~ k ~ ' then n_' ~ a ~ ' else 0 end) as ' ~ int ~ ')'}) -%}
    {%- endfor -%}{%- endfor -%}{%- endif -%}
    {%- for w in c['windows'] if w > 1 -%}
        {%- if prefix in ['u', 'ub', 'uc'] -%}
            {#- ub and uc group by user and key: their rows are one per day already -#}
            {%- set active_days = prefix ~ '_active_days_' ~ w ~ 'd' -%}
            {%- do aggs.append(crowd_distinct_count(active_days, 'day', 'age', w) if prefix == 'u' else
                               {'name': active_days, 'over': none, 'expr': crowd_count_within('age', w)}) -%}
        {%- endif -%}
        {%- if prefix == 'u' -%}
            {%- do aggs.append(crowd_distinct_count('u_targets_' ~ w ~ 'd', 'target_id', 'age', w)) -%}
        {%- endif -%}
        {%- if prefix in ['b', 'c'] -%}
            {%- do aggs.append(crowd_distinct_count(prefix ~ '_users_' ~ w ~ 'd', 'user_id', 'age', w)) -%}
            {%- do aggs.append(crowd_distinct_count(prefix ~ '_buyers_' ~ w ~ 'd', 'user_id', 'buy_age', w)) -%}
        {%- endif -%}
    {%- endfor -%}
    {%- if prefix in ['u', 'ub', 'uc'] -%}
        {%- for a in c['actions'] -%}
            {%- do aggs.append({'name': prefix ~ '_recency_' ~ a, 'over': none,
                                'expr': 'cast(min(case when n_' ~ a ~ ' > 0 then age end) as ' ~ int ~ ')'}) -%}
        {%- endfor -%}
        {%- do aggs.append({'name': prefix ~ '_recency_any', 'over': none, 'expr': 'cast(min(age) as ' ~ int ~ ')'}) -%}
    {%- endif -%}
    {{ return(aggs) }}
{% endmacro %}

{% macro crowd_count_within(age, w) %}
    {{- return('cast(sum(case when ' ~ age ~ ' <= ' ~ w ~ ' then 1 else 0 end) as ' ~ dbt.type_int() ~ ')') -}}
{% endmacro %}

{#- A distinct count of `over` within w days, by its rows' first `age` ('age', or 'buy_age': the first with a buy). -#}
{% macro crowd_distinct_count(name, over, age, w) %}
    {{- return({'name': name, 'over': over, 'age': age, 'expr': crowd_count_within(age, w)}) -}}
{% endmacro %}

{#- One row per key and distinct `column` (never null) of the history: the column's first age in the window,
    and where with_buys its first age with a buy (null if none). -#}
{% macro crowd_distinct_rows(keys, column, with_buys) %}
    select
        {{ keys | join(', ') }},
        {{ column }},
        min(age) as age{% if with_buys %},
        min(case when n_buy > 0 then age end) as buy_age{% endif %}
    from history
    where {{ column }} is not null
    group by {{ keys | join(', ') }}, {{ column }}
{% endmacro %}

{#- The ratios, selected over the aggregates. -#}
{% macro crowd_window_ratios(prefix) %}
    {%- set exprs = [] -%}
    {%- for w in crowd_config()['windows'] if w >= 7 -%}
        {%- set p = prefix ~ '_' -%}
        {%- set s = '_' ~ w ~ 'd' -%}
        {#- in double on every engine (Spark divides by a decimal literal in decimal) -#}
        {%- do exprs.append('cast(' ~ p ~ 'cart' ~ s ~ ' as double) / cast(' ~ p ~ 'click' ~ s ~ ' + 1 as double) as ' ~ p ~ 'cart_rate' ~ s) -%}
        {%- do exprs.append('cast(' ~ p ~ 'buy' ~ s ~ ' as double) / cast(' ~ p ~ 'click' ~ s ~ ' + 1 as double) as ' ~ p ~ 'buy_rate' ~ s) -%}
        {%- do exprs.append('cast(' ~ p ~ 'buy' ~ s ~ ' as double) / cast(' ~ p ~ 'cart' ~ s ~ ' + 1 as double) as ' ~ p ~ 'buy_per_cart' ~ s) -%}
    {%- endfor -%}
    {{ exprs | join(',\n    ') }}
{% endmacro %}

{#- The history rows (one per key and day) of this run's dates, from dw_user_target_daily (or `relation`,
    keyed by user and `key`). -#}
{% macro crowd_history_rows(where='1 = 1', dates_sql=none, relation=none, key='target_id') %}
    {%- set c = crowd_config() -%}
    select
        d.ds,
        h.user_id,
        h.{{ key }},
        h.day,
        {{ crowd_age_days('h.day', 'd.ds') }} as age,
        h.n_click, h.n_collect, h.n_cart, h.n_buy
    from {{ relation if relation is not none else ref('dw_user_target_daily') }} as h
    inner join ({{ dates_sql if dates_sql is not none else crowd_run_dates_sql() }}) as d
        on h.day >= cast({{ dbt.dateadd('day', -c['history_days'], 'd.ds') }} as date)
        and h.day < d.ds
    where {{ where }}
{% endmacro %}

{#- The days of the user's day-by-day counts (target item only: the Tianchi seed's 7 x 4 counts). -#}
{% macro crowd_daily_count_days() %}
    {%- set c = crowd_config() -%}
    {{ return(range(1, [7, c['history_days']] | min + 1) | list if c['item_level'] else []) }}
{% endmacro %}

{#-
  The time context of a pair's last interaction (ads_pair_context), target item only:
    ub_last_hour        hour of day of the last interaction (0 .. 23)
    ub_last_weekday     its day of week (0 = Sunday .. 6)
    ub_last_weekend     1 on a Saturday or Sunday
    ub_last_action      its action code (1 click, 2 collect, 3 cart, 4 buy)
    ub_hours_since_last hours from it to ds (at least 1: ds is midnight, the event before it)
  hour and weekday are categorical: the feature map embeds them (ml/features/feature_map.py CONTEXT_FIELDS).
-#}
{% macro crowd_context_columns() %}
    {{ return(['ub_last_hour', 'ub_last_weekday', 'ub_last_weekend', 'ub_last_action', 'ub_hours_since_last']) }}
{% endmacro %}

{% macro crowd_context_expression(column, ts, ds, action_code) %}
    {%- set int = dbt.type_int() -%}
    {%- set exprs = {
        'ub_last_hour': 'cast(' ~ crowd_hour_of_day(ts) ~ ' as ' ~ int ~ ')',
        'ub_last_weekday': 'cast(' ~ crowd_day_of_week(ts) ~ ' as ' ~ int ~ ')',
        'ub_last_weekend': 'cast(case when ' ~ crowd_day_of_week(ts) ~ ' in (0, 6) then 1 else 0 end as ' ~ int ~ ')',
        'ub_last_action': 'cast(' ~ action_code ~ ' as ' ~ int ~ ')',
        'ub_hours_since_last': 'cast(' ~ dbt.datediff(ts, ds, 'hour') ~ ' as ' ~ int ~ ')',
    } -%}
    {{ return(exprs[column]) }}
{% endmacro %}

{#- One ADS model: the window aggregates and ratios of `prefix`, grouped by `keys`, over the history rows of
    this run's dates (crowd_history_rows with `where`, `relation` and `key`). The distinct counts are counted
    over crowd_distinct_rows (see crowd_window_aggregate_list) and joined to the rest by the keys; a group with
    no such row (a user of brandless items only, for the targets touched) counts 0. -#}
{% macro crowd_window_features(prefix, keys, where='1 = 1', relation=none, key='target_id') %}
{%- set aggs = crowd_window_aggregate_list(prefix) -%}
{%- set overs = aggs | map(attribute='over') | reject('none') | unique | list -%}
with history as (
    {{ crowd_history_rows(where, relation=relation, key=key) }}
),

sums as (
    select
        {{ keys | join(', ') }},
        {%- for agg in aggs if agg['over'] is none %}
        {{ agg['expr'] }} as {{ agg['name'] }}{% if not loop.last %},{% endif %}
        {%- endfor %}
    from history
    group by {{ keys | join(', ') }}
),
{%- for over in overs %}

distinct_{{ over }} as (
    select
        {{ keys | join(', ') }},
        {%- for agg in aggs if agg['over'] == over %}
        {{ agg['expr'] }} as {{ agg['name'] }}{% if not loop.last %},{% endif %}
        {%- endfor %}
    from ({{ crowd_distinct_rows(keys, over, 'buy_age' in (aggs | selectattr('over', 'equalto', over)
                                                           | map(attribute='age') | list)) }}) as rows_of_{{ over }}
    group by {{ keys | join(', ') }}
),
{%- endfor %}

aggregated as (
    select
        {%- for k in keys %}
        sums.{{ k }},
        {%- endfor %}
        {%- for agg in aggs %}
        {% if agg['over'] is none %}sums.{{ agg['name'] }}{% else %}cast(coalesce(distinct_{{ agg['over'] }}.{{ agg['name'] }}, 0) as {{ dbt.type_int() }}) as {{ agg['name'] }}{% endif %}{% if not loop.last %},{% endif %}
        {%- endfor %}
    from sums
    {%- for over in overs %}
    left join distinct_{{ over }}
        on {% for k in keys %}sums.{{ k }} = distinct_{{ over }}.{{ k }}{% if not loop.last %} and {% endif %}{% endfor %}
    {%- endfor %}
)

select
    aggregated.*,
    {{ crowd_window_ratios(prefix) }}
from aggregated
{% endmacro %}

{#- Events per key and day and action (the DW daily tables every window feature sums). -#}
{% macro crowd_daily_action_counts(keys, where='true') %}
select
    {{ keys | join(', ') }},
    {%- for a in crowd_config()['actions'] %}
    cast(sum(case when action = '{{ a }}' then 1 else 0 end) as {{ dbt.type_int() }}) as n_{{ a }}{% if not loop.last %},{% endif %}
    {%- endfor %}
from {{ ref('dw_events') }}
where {{ where }}
group by {{ keys | join(', ') }}
{% endmacro %}
