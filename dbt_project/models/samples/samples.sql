-- The training samples of each ds: candidates, labels (buy, and collect-or-cart for the auxiliary task)
-- in [ds, ds + label_days), and the user, target and user x target features as of ds. The forward date
-- (var forward_date) has no labels yet: it is scored from samples_forward, never trained on.
{%- set labelled = crowd_config()['labelled_dates'] -%}
{{ crowd_sample_rows(
    '(select * from ' ~ ref('samples_candidates') ~ ' where ' ~ crowd_in_run_dates('ds', labelled) ~ ')',
    crowd_run_dates_sql(labelled)
) }}
