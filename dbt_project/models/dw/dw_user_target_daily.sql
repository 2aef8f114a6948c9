-- Events per (user, target, day) and action: every window feature is a sum over these rows, so the
-- per-ds ADS models never rescan the event log. target_id is null for items with no target (a brandless
-- item when the target is the brand): those still count in the user's own features.
{{ crowd_daily_action_counts(['user_id', 'target_id', 'day']) }}
