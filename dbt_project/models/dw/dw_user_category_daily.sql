{%- set c = crowd_config() -%}
-- Events per (user, leaf category, day) and action: the sums behind the uc_ and c_ features of target
-- item (the user's and everyone's activity in the candidate item's category). Empty for other targets,
-- whose target already is, or sits in, one category.
{{ crowd_daily_action_counts(['user_id', 'category_id', 'day'], 'true' if c['item_level'] else '1 = 0') }}
