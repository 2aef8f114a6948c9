{#-
  The ADS feature columns, generated from the windows so that adding a window is one var, and so that the
  samples' feature join, the exports and the pandas reference (ml/warehouse/reference.py) agree on names.
  Prefixes: u (user), b (target: brand or category), ub (user x target).

  From a relation with one row per (key, day) holding `age` (whole days before ds, >= 1), `day`,
  n_click / n_collect / n_cart / n_buy, user_id and target_id:
    {p}_{action}_{w}d          events of that action in the last w days
    {p}_active_days_{w}d       (u, ub) distinct active days in the last w days, for w > 1
    {p}_targets_{w}d           (u) distinct targets touched, for w > 1
    {p}_users_{w}d, {p}_buyers_{w}d   (b) distinct users with any event / with a buy, for w > 1
    {p}_recency_{action|any}   (u, ub) days since the last such event in the history window, null if none
    {p}_{cart,buy}_rate_{w}d   cart / (click + 1), buy / (click + 1), for w >= 7
    {p}_buy_per_cart_{w}d      buy / (cart + 1), for w >= 7
-#}

{% macro crowd_feature_columns(prefix) %}
    {%- set c = crowd_config() -%}
    {%- set columns = [] -%}
    {%- for a in c['actions'] -%}{%- for w in c['windows'] -%}
        {%- do columns.append({'name': prefix ~ '_' ~ a ~ '_' ~ w ~ 'd', 'kind': 'count'}) -%}
    {%- endfor -%}{%- endfor -%}
    {%- for w in c['windows'] if w > 1 -%}
        {%- if prefix in ['u', 'ub'] -%}{%- do columns.append({'name': prefix ~ '_active_days_' ~ w ~ 'd', 'kind': 'count'}) -%}{%- endif -%}
        {%- if prefix == 'u' -%}{%- do columns.append({'name': 'u_targets_' ~ w ~ 'd', 'kind': 'count'}) -%}{%- endif -%}
        {%- if prefix == 'b' -%}
            {%- do columns.append({'name': 'b_users_' ~ w ~ 'd', 'kind': 'count'}) -%}
            {%- do columns.append({'name': 'b_buyers_' ~ w ~ 'd', 'kind': 'count'}) -%}
        {%- endif -%}
    {%- endfor -%}
    {%- if prefix in ['u', 'ub'] -%}
        {%- for a in c['actions'] + ['any'] -%}{%- do columns.append({'name': prefix ~ '_recency_' ~ a, 'kind': 'recency'}) -%}{%- endfor -%}
    {%- endif -%}
    {%- for w in c['windows'] if w >= 7 -%}
        {%- for r in ['cart_rate', 'buy_rate', 'buy_per_cart'] -%}
            {%- do columns.append({'name': prefix ~ '_' ~ r ~ '_' ~ w ~ 'd', 'kind': 'ratio'}) -%}
        {%- endfor -%}
    {%- endfor -%}
    {{ return(columns) }}
{% endmacro %}

{#- The aggregates, grouped by the caller. -#}
{% macro crowd_window_aggregates(prefix) %}
    {%- set c = crowd_config() -%}
    {%- set int = dbt.type_int() -%}
    {%- set exprs = [] -%}
    {%- for a in c['actions'] -%}{%- for w in c['windows'] -%}
        {%- do exprs.append('cast(sum(case when age <= ' ~ w ~ ' then n_' ~ a ~ ' else 0 end) as ' ~ int ~ ') as ' ~ prefix ~ '_' ~ a ~ '_' ~ w ~ 'd') -%}
    {%- endfor -%}{%- endfor -%}
    {%- for w in c['windows'] if w > 1 -%}
        {%- if prefix in ['u', 'ub'] -%}
            {%- do exprs.append('cast(count(distinct case when age <= ' ~ w ~ ' then day end) as ' ~ int ~ ') as ' ~ prefix ~ '_active_days_' ~ w ~ 'd') -%}
        {%- endif -%}
        {%- if prefix == 'u' -%}
            {%- do exprs.append('cast(count(distinct case when age <= ' ~ w ~ ' then target_id end) as ' ~ int ~ ') as u_targets_' ~ w ~ 'd') -%}
        {%- endif -%}
        {%- if prefix == 'b' -%}
            {%- do exprs.append('cast(count(distinct case when age <= ' ~ w ~ ' then user_id end) as ' ~ int ~ ') as b_users_' ~ w ~ 'd') -%}
            {%- do exprs.append('cast(count(distinct case when age <= ' ~ w ~ ' and n_buy > 0 then user_id end) as ' ~ int ~ ') as b_buyers_' ~ w ~ 'd') -%}
        {%- endif -%}
    {%- endfor -%}
    {%- if prefix in ['u', 'ub'] -%}
        {%- for a in c['actions'] -%}
            {%- do exprs.append('cast(min(case when n_' ~ a ~ ' > 0 then age end) as ' ~ int ~ ') as ' ~ prefix ~ '_recency_' ~ a) -%}
        {%- endfor -%}
        {%- do exprs.append('cast(min(age) as ' ~ int ~ ') as ' ~ prefix ~ '_recency_any') -%}
    {%- endif -%}
    {{ exprs | join(',\n    ') }}
{% endmacro %}

{#- The ratios, selected over the aggregates. -#}
{% macro crowd_window_ratios(prefix) %}
    {%- set exprs = [] -%}
    {%- for w in crowd_config()['windows'] if w >= 7 -%}
        {%- set p = prefix ~ '_' -%}
        {%- set s = '_' ~ w ~ 'd' -%}
        {%- do exprs.append(p ~ 'cart' ~ s ~ ' / (' ~ p ~ 'click' ~ s ~ ' + 1.0) as ' ~ p ~ 'cart_rate' ~ s) -%}
        {%- do exprs.append(p ~ 'buy' ~ s ~ ' / (' ~ p ~ 'click' ~ s ~ ' + 1.0) as ' ~ p ~ 'buy_rate' ~ s) -%}
        {%- do exprs.append(p ~ 'buy' ~ s ~ ' / (' ~ p ~ 'cart' ~ s ~ ' + 1.0) as ' ~ p ~ 'buy_per_cart' ~ s) -%}
    {%- endfor -%}
    {{ exprs | join(',\n    ') }}
{% endmacro %}

{#- The history rows (one per key and day) of this run's dates, from dw_user_target_daily. -#}
{% macro crowd_history_rows(where='1 = 1', dates_sql=none) %}
    {%- set c = crowd_config() -%}
    select
        d.ds,
        h.user_id,
        h.target_id,
        h.day,
        {{ crowd_age_days('h.day', 'd.ds') }} as age,
        h.n_click, h.n_collect, h.n_cart, h.n_buy
    from {{ ref('dw_user_target_daily') }} as h
    inner join ({{ dates_sql if dates_sql is not none else crowd_run_dates_sql() }}) as d
        on h.day >= cast({{ dbt.dateadd('day', -c['history_days'], 'd.ds') }} as date)
        and h.day < d.ds
    where {{ where }}
{% endmacro %}
