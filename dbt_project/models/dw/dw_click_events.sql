-- Every click event with its item's target, brand, category and shop.
{{ dw_action_events('click') }}
