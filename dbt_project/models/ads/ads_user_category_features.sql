{%- set c = crowd_config() -%}
-- user x leaf category features at each ds (target item: the category of the candidate item), from events
-- strictly before ds. Empty for other targets.
{{ crowd_window_features('uc', ['ds', 'user_id', 'category_id'], 'true' if c['item_level'] else '1 = 0',
                         relation=ref('dw_user_category_daily'), key='category_id') }}
