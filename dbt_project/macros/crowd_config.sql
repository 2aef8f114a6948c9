{#-
  The project's settings, read from vars and validated once per model at parse time, so that a bad value
  stops the run before anything is written, with a message that names the var.
-#}

{% macro crowd_fail(name, message) %}
    {{ exceptions.raise_compiler_error("var '" ~ name ~ "': " ~ message) }}
{% endmacro %}

{% macro crowd_parse_date(name, value) %}
    {%- set text = (value ~ '') | trim -%}
    {%- if not modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}$', text) -%}
        {{ crowd_fail(name, "expected a date as YYYY-MM-DD, got '" ~ text ~ "'") }}
    {%- endif -%}
    {%- set y, m, d = text[0:4] | int, text[5:7] | int, text[8:10] | int -%}
    {%- if m < 1 or m > 12 -%}{{ crowd_fail(name, "month " ~ m ~ " does not exist in '" ~ text ~ "'") }}{%- endif -%}
    {%- set next_month = modules.datetime.date(y + (m // 12), (m % 12) + 1, 1) -%}
    {%- set month_days = (next_month - modules.datetime.timedelta(days=1)).day -%}
    {%- if d < 1 or d > month_days -%}{{ crowd_fail(name, "day " ~ d ~ " does not exist in '" ~ text ~ "'") }}{%- endif -%}
    {{ return(modules.datetime.date(y, m, d)) }}
{% endmacro %}

{% macro crowd_positive_int(name) %}
    {%- set value = var(name) -%}
    {%- if value is not number or (value | int) != value or value < 1 -%}
        {{ crowd_fail(name, "expected a positive whole number, got '" ~ value ~ "'") }}
    {%- endif -%}
    {{ return(value | int) }}
{% endmacro %}

{% macro crowd_nonnegative_int(name) %}
    {%- set value = var(name) -%}
    {%- if value is not number or value is sameas true or value is sameas false or (value | int) != value or value < 0 -%}
        {{ crowd_fail(name, "expected a whole number of 0 or more, got '" ~ value ~ "'") }}
    {%- endif -%}
    {{ return(value | int) }}
{% endmacro %}

{% macro crowd_config() %}
    {%- set history = crowd_positive_int('history_days') -%}
    {%- set sequence = crowd_positive_int('sequence_days') -%}
    {%- set label = crowd_positive_int('label_days') -%}
    {%- set step = crowd_positive_int('sample_step_days') -%}
    {%- if sequence > history -%}{{ crowd_fail('sequence_days', "cannot exceed history_days (" ~ history ~ ")") }}{%- endif -%}
    {%- set windows = var('feature_windows') -%}
    {%- if windows is string or windows is not iterable or windows | length == 0 -%}
        {{ crowd_fail('feature_windows', "expected a list of day counts, got '" ~ windows ~ "'") }}
    {%- endif -%}
    {%- for w in windows -%}
        {%- if w is not number or (w | int) != w or w < 1 or w > history -%}
            {{ crowd_fail('feature_windows', "each window must be a whole number of days in 1.." ~ history ~ ", got '" ~ w ~ "'") }}
        {%- endif -%}
    {%- endfor -%}
    {%- set target = var('target') -%}
    {%- if target not in ['brand', 'category', 'item', 'tag'] -%}
        {{ crowd_fail('target', "expected 'brand', 'category', 'item' or 'tag', got '" ~ target ~ "'") }}
    {%- endif -%}
    {%- set tags = var('tags') or [] -%}
    {%- if (target == 'tag') != (tags | length > 0) -%}
        {{ crowd_fail('tags', "target tag needs tags, and only target tag has them") }}
    {%- endif -%}
    {%- for t in tags -%}
        {%- if t is not mapping or t.get('tag_id') is not number or not t.get('categories') or t.get('min_buys') is not number
               or not modules.re.match('^[a-z0-9][a-z0-9_-]{0,63}$', (t.get('name') or '') | string) -%}
            {{ crowd_fail('tags', "each tag needs tag_id, categories and min_buys, got '" ~ t ~ "'") }}
        {%- endif -%}
        {%- for cat in t['categories'] -%}
            {%- if cat is not number or (cat | int) != cat -%}{{ crowd_fail('tags', "category ids are whole numbers, got '" ~ cat ~ "'") }}{%- endif -%}
        {%- endfor -%}
        {%- if t.get('horizon_days') is not none and (t['horizon_days'] is not number or t['horizon_days'] < 1) -%}
            {{ crowd_fail('tags', "horizon_days is a positive number of days or null, got '" ~ t['horizon_days'] ~ "'") }}
        {%- endif -%}
    {%- endfor -%}
    {%- set candidate = var('candidate_days') -%}
    {%- set candidate = history if candidate is none else crowd_positive_int('candidate_days') -%}
    {%- if candidate > history -%}{{ crowd_fail('candidate_days', "cannot exceed history_days (" ~ history ~ ")") }}{%- endif -%}
    {%- set first = crowd_parse_date('first_sample_date', var('first_sample_date')) -%}
    {%- set last = crowd_parse_date('last_sample_date', var('last_sample_date')) -%}
    {%- set evaluation = crowd_parse_date('evaluation_date', var('evaluation_date')) -%}
    {%- if last < first -%}{{ crowd_fail('last_sample_date', "is before first_sample_date " ~ first) }}{%- endif -%}
    {%- if evaluation <= last -%}{{ crowd_fail('evaluation_date', "must come after last_sample_date " ~ last) }}{%- endif -%}
    {%- set schedule = [] -%}
    {%- for i in range(((last - first).days // step) + 1) -%}
        {%- do schedule.append((first + modules.datetime.timedelta(days=step * i)).isoformat()) -%}
    {%- endfor -%}
    {%- set validation = [] -%}
    {%- for value in (var('validation_dates') or []) -%}
        {%- do validation.append(crowd_parse_date('validation_dates', value).isoformat()) -%}
    {%- endfor -%}
    {%- set schedule = schedule + validation -%}
    {%- set forward = var('forward_date') -%}
    {%- set forward = crowd_parse_date('forward_date', forward).isoformat() if (forward is not none and (forward | string | trim) != '') else none -%}
    {%- set ds = var('ds') -%}
    {%- if ds is none or (ds is string and ds | trim == '') -%}
        {%- set run_dates = schedule + [evaluation.isoformat()] + ([forward] if forward else []) -%}
    {%- else -%}
        {%- set raw = (ds | string).split(',') if (ds is string or ds is not iterable) else ds -%}
        {%- set run_dates = [] -%}
        {%- for value in raw -%}
            {%- set parsed = crowd_parse_date('ds', value).isoformat() -%}
            {%- if parsed not in run_dates -%}{%- do run_dates.append(parsed) -%}{%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {%- if forward and forward not in run_dates -%}{%- do run_dates.append(forward) -%}{%- endif -%}
    {#- a published crowds' feature date whose label window the log now holds (samples_outcomes); labelled -#}
    {%- set outcome = var('outcome_date', none) -%}
    {%- set outcome = crowd_parse_date('outcome_date', outcome).isoformat() if (outcome is not none and (outcome | string | trim) != '') else none -%}
    {%- if outcome and outcome == forward -%}
        {{ crowd_fail('outcome_date', "is the forward date " ~ forward ~ ", whose label window is not in the log") }}
    {%- endif -%}
    {%- if outcome and outcome not in run_dates -%}{%- do run_dates.append(outcome) -%}{%- endif -%}
    {%- set population = var('crowd_population') -%}
    {%- if population not in ['touched', 'evaluated'] -%}
        {{ crowd_fail('crowd_population', "expected 'touched' or 'evaluated', got '" ~ population ~ "'") }}
    {%- endif -%}
    {%- set evaluated = var('evaluated_targets') or [] -%}
    {%- for t in evaluated -%}
        {%- if t is not number or (t | int) != t -%}
            {{ crowd_fail('evaluated_targets', "expected a list of target ids, got '" ~ t ~ "'") }}
        {%- endif -%}
    {%- endfor -%}
    {{ return({
        'history_days': history, 'sequence_days': sequence, 'label_days': label, 'candidate_days': candidate,
        'item_level': target == 'item', 'tag_level': target == 'tag', 'tags': tags,
        'windows': windows | map('int') | list | sort, 'target': target,
        'first_sample_date': first.isoformat(), 'evaluation_date': evaluation.isoformat(),
        'validation_dates': validation,
        'run_dates': run_dates | sort, 'forward_date': forward, 'outcome_date': outcome,
        'labelled_dates': run_dates | reject('equalto', forward) | sort,
        'series_period_days': [30, history] | min,
        'crowd_population': population, 'crowd_active_days': crowd_positive_int('crowd_active_days'),
        'sequence_length': crowd_positive_int('sequence_length'),
        'negatives_per_target': crowd_nonnegative_int('negatives_per_target'),
        'n_evaluated_targets': crowd_positive_int('n_evaluated_targets'),
        'evaluated_targets': evaluated | map('int') | list,
        'lstm_top_categories': crowd_positive_int('lstm_top_categories'),
        'actions': ['click', 'collect', 'cart', 'buy'],
    }) }}
{% endmacro %}

{#- The sample dates of this run (or `dates`) as a one-column relation `ds` (portable SQL; empty if none). -#}
{% macro crowd_run_dates_sql(dates=none) %}
    {%- set dates = dates if dates is not none else crowd_config()['run_dates'] -%}
    {%- if dates | length == 0 %}
    select cast(null as date) as ds where 1 = 0
    {%- else %}
    {#- one inline table, not a union of one-row selects: Spark makes a task of each union branch #}
    select ds from (values {% for d in dates %}(cast('{{ d }}' as date)){% if not loop.last %}, {% endif %}{% endfor %}) as run_dates (ds)
    {%- endif %}
{% endmacro %}

{#- Keep only the rows of this run's dates (or `dates`) when reading another per-ds model. -#}
{% macro crowd_in_run_dates(column='ds', dates=none) %}
    {%- set dates = dates if dates is not none else crowd_config()['run_dates'] -%}
    {%- if dates | length == 0 -%}1 = 0{%- else -%}
    {{ column }} in ({%- for d in dates -%}cast('{{ d }}' as date){% if not loop.last %}, {% endif %}{%- endfor -%})
    {%- endif -%}
{% endmacro %}
