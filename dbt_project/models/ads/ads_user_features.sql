-- User features at each ds, over every target (and items of no target), from events strictly before ds.
{{ crowd_window_features('u', ['ds', 'user_id']) }}
