{{ config(materialized='view') }}
-- All four detail tables as one relation, with the action: what sequences and series read.
{% for a in ['click', 'collect', 'cart', 'buy'] %}
select '{{ a }}' as action, user_id, item_id, target_id, brand_id, category_id, parent_category_id, shop_id, ts, day, n_raw
from {{ ref('dw_' ~ a ~ '_events') }}
{% if not loop.last %}union all{% endif %}
{% endfor %}
