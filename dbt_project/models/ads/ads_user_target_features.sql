-- user x target features at each ds, from events strictly before ds (see macros/crowd_features.sql).
{{ crowd_window_features('ub', ['ds', 'user_id', 'target_id'], 'h.target_id is not null') }}
