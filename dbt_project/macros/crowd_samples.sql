{#- Shared by samples and samples_evaluation: labels, and the feature join onto (ds, user, target) pairs. -#}

{#- Labels per (ds, user, target) from events in [ds, ds + label_days). Pairs with no row have label 0.
    label_buy: a buy of the target in the window; for a tag, at least min_buys buys in its categories in the
    window, or in the horizon_days ending with it (a state tag counts recent past buys too).
    label_collect_cart: a collect or a cart in [ds, ds + label_days). -#}
{% macro crowd_label_rows(dates_sql) %}
    {%- set c = crowd_config() -%}
    {%- if c['tag_level'] %}
    select
        d.ds,
        h.user_id,
        h.target_id,
        case when sum(h.n_buy) >= t.min_buys then 1 else 0 end as label_buy,
        max(case when h.day >= d.ds and h.n_collect + h.n_cart > 0 then 1 else 0 end) as label_collect_cart
    from {{ ref('dw_user_target_daily') }} as h
    inner join (select distinct tag_id, min_buys, horizon_days from {{ ref('dim_tags') }}) as t on h.target_id = t.tag_id
    inner join ({{ dates_sql }}) as d
        on h.day >= cast({{ dbt.dateadd('day', c['label_days'] ~ ' - t.horizon_days', 'd.ds') }} as date)
        and h.day < cast({{ dbt.dateadd('day', c['label_days'], 'd.ds') }} as date)
    group by d.ds, h.user_id, h.target_id, t.min_buys
    {%- else %}
    -- depends_on: {{ ref('dim_tags') }}
    select
        d.ds,
        h.user_id,
        h.target_id,
        max(case when h.n_buy > 0 then 1 else 0 end) as label_buy,
        max(case when h.n_collect + h.n_cart > 0 then 1 else 0 end) as label_collect_cart
    from {{ ref('dw_user_target_daily') }} as h
    inner join ({{ dates_sql }}) as d
        on h.day >= d.ds
        and h.day < cast({{ dbt.dateadd('day', c['label_days'], 'd.ds') }} as date)
    where h.target_id is not null
    group by d.ds, h.user_id, h.target_id
    {%- endif %}
{% endmacro %}

{#-
  pairs: a relation (ds, user_id, target_id, is_candidate, inclusion_prob). The result has one row per
  pair: keys, the target's category, the labels, then the u_, b_ and ub_ features, and for target item
  also the uc_ (user x the item's category), c_ (the category) and the pair's time context
  (crowd_context_columns). A pair with no history together (a sampled negative) has zero counts and ratios
  and null recencies and context.
-#}
{% macro crowd_sample_rows(pairs, dates_sql, with_labels=true) %}
    {%- set int = dbt.type_int() -%}
    {%- set item_level = crowd_config()['item_level'] -%}
    -- depends_on: {{ ref('ads_user_category_features') }}, {{ ref('ads_category_features') }}, {{ ref('ads_pair_context') }}
    {%- if with_labels %}
    with labels as (
        {{ crowd_label_rows(dates_sql) }}
    )
    {%- endif %}

    select
        p.ds,
        p.user_id,
        p.target_id,
        t.category_id as target_category_id,
        p.is_candidate,
        p.inclusion_prob,
        {%- if with_labels %}
        cast(coalesce(l.label_buy, 0) as {{ int }}) as label_buy,
        cast(coalesce(l.label_collect_cart, 0) as {{ int }}) as label_collect_cart,
        {%- endif %}
        {%- set features = [] %}
        {%- for prefix in ['u', 'b'] + (['c'] if item_level else []) %}
        {%- for col in crowd_feature_columns(prefix) %}
        {#- a target (or category) with no event in the window has no row: zero counts #}
        {%- do features.append(prefix ~ '.' ~ col['name'] if prefix == 'u' else 'coalesce(' ~ prefix ~ '.' ~ col['name'] ~ ', 0) as ' ~ col['name']) %}
        {%- endfor %}
        {%- endfor %}
        {%- for prefix in ['ub'] + (['uc'] if item_level else []) %}
        {%- for col in crowd_feature_columns(prefix) %}
        {%- do features.append(prefix ~ '.' ~ col['name'] if col['kind'] == 'recency' else 'coalesce(' ~ prefix ~ '.' ~ col['name'] ~ ', 0) as ' ~ col['name']) %}
        {%- endfor %}
        {%- endfor %}
        {%- for col in (crowd_context_columns() if item_level else []) %}
        {%- do features.append('x.' ~ col) %}
        {%- endfor %}
        {{ features | join(',\n        ') }}
    from {{ pairs }} as p
    inner join {{ ref('dim_targets') }} as t on p.target_id = t.target_id
    inner join {{ ref('ads_user_features') }} as u on p.ds = u.ds and p.user_id = u.user_id
    left join {{ ref('ads_target_features') }} as b on p.ds = b.ds and p.target_id = b.target_id
    left join {{ ref('ads_user_target_features') }} as ub
        on p.ds = ub.ds and p.user_id = ub.user_id and p.target_id = ub.target_id
    {%- if item_level %}
    left join {{ ref('ads_user_category_features') }} as uc
        on p.ds = uc.ds and p.user_id = uc.user_id and t.category_id = uc.category_id
    left join {{ ref('ads_category_features') }} as c on p.ds = c.ds and t.category_id = c.category_id
    left join {{ ref('ads_pair_context') }} as x
        on p.ds = x.ds and p.user_id = x.user_id and p.target_id = x.target_id
    {%- endif %}
    {%- if with_labels %}
    left join labels as l
        on p.ds = l.ds and p.user_id = l.user_id and p.target_id = l.target_id
    {%- endif %}
{% endmacro %}

{#-
  The targets a population covers as of a date: var evaluated_targets when given, else the
  n_evaluated_targets targets with most distinct buyers in the history window before that date
  (point-in-time: nothing on or after the date decides which targets are chosen). For target item, every
  item of the subset: the next-day task ranks pairs, not the buyers of a few items.
-#}
{% macro crowd_top_targets(as_of) %}
    {%- set c = crowd_config() -%}
    {%- set day = "cast('" ~ as_of ~ "' as date)" -%}
    with buyers as (
        select t.target_id, count(distinct b.user_id) as n_buyers
        from {{ ref('dim_target_subset') }} as t
        left join {{ ref('dw_buy_events') }} as b
            on b.target_id = t.target_id
            and b.ts >= {{ dbt.dateadd('day', -c['history_days'], day) }}
            and b.ts < {{ day }}
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
    {% elif c['item_level'] %}
    where true
    {% else %}
    where buyer_rank <= {{ c['n_evaluated_targets'] }}
    {% endif %}
{% endmacro %}

{#-
  The forward population as of `day` (a date string), as common table expressions ending in forward_pairs
  (ds, user_id, target_id, is_candidate, inclusion_prob): users active in the crowd_active_days before day;
  crowd_population 'touched' pairs each with the targets (of dim_target_subset) they were active on in the
  last candidate_days, 'evaluated' with every top target as of day. `enabled` false: the same query over no
  user (a constant false filter), so a model refs the same models with and without its date. samples_forward
  scores it; samples_outcomes finds again which buyers the published crowds' population held.
-#}
{% macro crowd_forward_pairs_ctes(day, enabled) %}
    {%- set c = crowd_config() -%}
    {%- set as_of = "cast('" ~ day ~ "' as date)" -%}
    {%- set dates = crowd_run_dates_sql([day]) %}
forward_active_users as (
    select distinct user_id
    from {{ ref('dw_user_target_daily') }}
    where {{ 'true' if enabled else 'false' }}
        and day >= cast({{ dbt.dateadd('day', -c['crowd_active_days'], as_of) }} as date)
        and day < {{ as_of }}
),

forward_touched as (
    select distinct h.ds, h.user_id, h.target_id
    from ({{ crowd_history_rows('h.target_id is not null', dates) }}) as h
    inner join forward_active_users as a on h.user_id = a.user_id
    inner join {{ ref('dim_target_subset') }} as s on h.target_id = s.target_id
    where h.age <= {{ c['candidate_days'] }}
),

{%- if c['crowd_population'] == 'touched' %}

forward_pairs as (
    select ds, user_id, target_id, true as is_candidate, cast(1.0 as double) as inclusion_prob from forward_touched
)
{%- else %}

forward_top_targets as (
    {{ crowd_top_targets(day) }}
),

forward_pairs as (
    select {{ as_of }} as ds, a.user_id, t.target_id, (p.user_id is not null) as is_candidate,
        cast(1.0 as double) as inclusion_prob
    from forward_active_users as a
    cross join forward_top_targets as t
    left join forward_touched as p on p.user_id = a.user_id and p.target_id = t.target_id
)
{%- endif %}
{% endmacro %}
