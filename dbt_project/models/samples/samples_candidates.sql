{%- set c = crowd_config() -%}
{%- set n_neg = c['negatives_per_target'] -%}
-- The training pairs of each ds: every (user, target) active together in the last candidate_days
-- (is_candidate; targets of dim_target_subset only), plus up to negatives_per_target users per active
-- target drawn from the history window's active users who were not (is_candidate false). The draw hashes
-- (target, ds, draw number), so a rebuild draws the same users. inclusion_prob: a candidate is always in;
-- a negative is one of about negatives_per_target drawn from the eligible users, so it stands for
-- 1 / inclusion_prob of them (what a weighted metric or a calibrated model needs).
with history as (
    {#- a tag's population is every active user, also those active only on items of no tag #}
    {{ crowd_history_rows('1 = 1' if c['tag_level'] else 'h.target_id is not null', crowd_run_dates_sql(c['labelled_dates'])) }}
),

active_pairs as (
    select distinct h.ds, h.user_id, h.target_id
    from history as h
    inner join {{ ref('dim_target_subset') }} as s on h.target_id = s.target_id
    where h.age <= {{ c['candidate_days'] }}
)

{%- if n_neg > 0 and not c['tag_level'] %},

active_users as (
    select
        ds,
        user_id,
        row_number() over (partition by ds order by user_id) - 1 as user_number,
        count(*) over (partition by ds) as n_users
    from (select distinct ds, user_id from history) as users
),

draws as (
    select t.ds, t.target_id, k.draw, n.n_users
    from (select distinct ds, target_id from active_pairs) as t
    inner join (select distinct ds, n_users from active_users) as n on t.ds = n.ds
    -- one inline table, not a union of one-row selects: Spark makes a task of each union branch
    cross join (values {% for k in range(1, 2 * n_neg + 1) %}({{ k }}){% if not loop.last %}, {% endif %}{% endfor %}) as k (draw)
),

drawn as (
    select dr.ds, dr.target_id, u.user_id, min(dr.draw) as first_draw
    from draws as dr
    inner join active_users as u
        on dr.ds = u.ds
        and u.user_number = {{ crowd_bucket(['dr.target_id', 'dr.ds', 'dr.draw'], 'dr.n_users') }}
    left join active_pairs as p
        on dr.ds = p.ds and dr.target_id = p.target_id and u.user_id = p.user_id
    where p.user_id is null
    group by dr.ds, dr.target_id, u.user_id
),

negatives as (
    select
        ds, target_id, user_id,
        row_number() over (partition by ds, target_id order by first_draw) as negative_number
    from drawn
),

eligible as (
    select p.ds, p.target_id, max(n.n_users) - count(*) as n_eligible
    from active_pairs as p
    inner join (select distinct ds, n_users from active_users) as n on p.ds = n.ds
    group by p.ds, p.target_id
)
{%- endif %}

{%- if c['tag_level'] %}
-- a tag is user-level: every user active in the history window, for every tag (no sampling)
select
    u.ds, u.user_id, t.target_id, (p.user_id is not null) as is_candidate, cast(1.0 as double) as inclusion_prob
from (select distinct ds, user_id from history) as u
cross join {{ ref('dim_target_subset') }} as t
left join active_pairs as p on p.ds = u.ds and p.user_id = u.user_id and p.target_id = t.target_id
{%- else %}
select ds, user_id, target_id, true as is_candidate, cast(1.0 as double) as inclusion_prob from active_pairs
{%- endif %}
{%- if n_neg > 0 and not c['tag_level'] %}
union all
select
    n.ds, n.user_id, n.target_id, false as is_candidate,
    least(cast(1 as double), cast({{ n_neg }} as double) / greatest(cast(e.n_eligible as double), cast(1 as double))) as inclusion_prob
from negatives as n
inner join eligible as e on n.ds = e.ds and n.target_id = e.target_id
where n.negative_number <= {{ n_neg }}
{%- endif %}
