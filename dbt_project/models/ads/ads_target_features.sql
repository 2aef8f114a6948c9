-- Target (brand, category, item or tag) features at each ds, over all users, from events strictly before ds.
{{ crowd_window_features('b', ['ds', 'target_id'], 'h.target_id is not null') }}
