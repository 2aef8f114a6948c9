{%- set c = crowd_config() -%}
-- Leaf category features at each ds over all users (target item: the candidate item's category's
-- popularity and conversion), from events strictly before ds. Empty for other targets.
{{ crowd_window_features('c', ['ds', 'category_id'], 'true' if c['item_level'] else '1 = 0',
                         relation=ref('dw_user_category_daily'), key='category_id') }}
