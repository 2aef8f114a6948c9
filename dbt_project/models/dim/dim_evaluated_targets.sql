{%- set c = crowd_config() -%}
-- The targets the evaluation set covers: var evaluated_targets when given, else the n_evaluated_targets
-- targets with most distinct buyers in the history window before the evaluation date.
{{ crowd_top_targets(c['evaluation_date']) }}
