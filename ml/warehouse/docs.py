"""Descriptions of the ADS and samples columns for dbt docs, generated from the feature grammar.

The feature columns are generated from the task's windows and actions (macros/crowd_features.sql), so there
are a few hundred of them and their set changes with a var: typing a description for each would drift. Each
name follows the grammar documented in that macro ({prefix}_{action}_{w}d, {prefix}_recency_{action}, ...),
and `describe_column` reads the description back out of the name. `document` writes the descriptions into the
layers' properties files (dbt takes a model's columns from one YAML file only), keeping every hand-written
description and test; `crowd warehouse --document` runs it over the columns of the task's built warehouse.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

LAYERS = ("ads", "samples")
ACTIONS = {"click": "clicks", "collect": "collects (favourites)", "cart": "add-to-carts", "buy": "buys"}
ONE_ACTION = {"click": "click", "collect": "collect", "cart": "add-to-cart", "buy": "buy", "any": "event"}
SUBJECTS = {"u": "the user", "b": "the target (brand, category, item or tag)", "ub": "the user on the target",
            "c": "the item's leaf category", "uc": "the user in the item's leaf category"}
FIXED = {
    "ds": "The date the row is as of: features read events strictly before it, labels the days from it.",
    "user_id": "The user.",
    "target_id": "The target: a brand, a category, an item or a tag, as the task says.",
    "category_id": "The leaf category.",
    "target_category_id": "The target's category (for a brand or tag, its most frequent category; for an item, "
                          "its leaf category).",
    "is_candidate": "1 when the user touched the target in the history window, 0 for a drawn or untouched pair.",
    "inclusion_prob": "The probability the pair was drawn into the samples (1 for a candidate); its inverse "
                      "weighs the pair back to the population.",
    "label_buy": "1 when the user buys the target in [ds, ds + label_days) (for a tag, at least min_buys buys in "
                 "its categories); recomputed from the detail events by tests/labels_fall_in_their_window.sql.",
    "label_collect_cart": "1 when the user collects or carts the target in [ds, ds + label_days): the "
                          "multi-task models' auxiliary label.",
    "in_population": "1 when the buyer's pair is in the scored population (recall@N counts the others as missed).",
    "hist_len": "How many behaviours the user's sequence holds (at most sequence_length).",
    "hist_target_id": "The targets of the user's last behaviours in the sequence window, most recent first.",
    "hist_category_id": "The categories of the same behaviours.",
    "hist_action": "Their action codes (1 click, 2 collect, 3 cart, 4 buy).",
    "hist_age_days": "Their ages in whole days before ds (at least 1).",
    "hist_age_hours": "Their ages in hours before ds (at least 1).",
    "timescale": "'month': buys per 30-day period over the history window; 'day': clicks per day over the "
                 "sequence window (the two-timescale LSTM's input).",
    "step": "The period (month) or day of the series, 0 the oldest.",
    "slot": "The category slot (dim_top_categories); the last slot holds every other category.",
    "n": "The count in that cell (only non-zero cells are stored).",
    "ub_last_hour": "Hour of day of the user's last interaction with the target before ds (0 .. 23).",
    "ub_last_weekday": "Its day of week (0 = Sunday .. 6).",
    "ub_last_weekend": "1 when it fell on a Saturday or Sunday.",
    "ub_last_action": "Its action code (1 click, 2 collect, 3 cart, 4 buy).",
    "ub_hours_since_last": "Hours from it to ds (at least 1).",
}
_P = "(?P<p>u|b|ub|c|uc)"
_A = "(?P<a>click|collect|cart|buy)"
_GRAMMAR = (
    (re.compile(rf"{_P}_{_A}_(?P<w>\d+)d"), "Count of {a} by {p} {w}."),
    (re.compile(rf"u_{_A}_day(?P<k>\d+)"), "Count of {a} by the user on day {k} before ds (1: the day before)."),
    (re.compile(rf"{_P}_active_days_(?P<w>\d+)d"), "Distinct days with an event of {p} {w}."),
    (re.compile(r"u_targets_(?P<w>\d+)d"), "Distinct targets the user touched {w}."),
    (re.compile(rf"{_P}_users_(?P<w>\d+)d"), "Distinct users with an event on {p} {w}."),
    (re.compile(rf"{_P}_buyers_(?P<w>\d+)d"), "Distinct users who bought {p} {w}."),
    (re.compile(rf"{_P}_recency_(?P<a>click|collect|cart|buy|any)"),
     "Days from the last {one} of {p} to ds, in the history window; null when there is none."),
    (re.compile(rf"{_P}_cart_rate_(?P<w>\d+)d"), "Add-to-carts / (clicks + 1) of {p} {w}."),
    (re.compile(rf"{_P}_buy_rate_(?P<w>\d+)d"), "Buys / (clicks + 1) of {p} {w}."),
    (re.compile(rf"{_P}_buy_per_cart_(?P<w>\d+)d"), "Buys / (add-to-carts + 1) of {p} {w}."),
)


def describe_column(name: str) -> str | None:
    """The column's description, from its name; None for a name outside the grammar."""
    if name in FIXED:
        return FIXED[name]
    for pattern, text in _GRAMMAR:
        m = pattern.fullmatch(name)
        if m:
            parts = m.groupdict()
            w = parts.get("w")
            return text.format(p=SUBJECTS[parts.get("p") or "u"], a=ACTIONS.get(parts.get("a"), ""),
                               one=ONE_ACTION.get(parts.get("a"), ""), k=parts.get("k"),
                               w="on the day before ds" if w == "1" else f"in the {w} days before ds")
    return None


class _Dumper(yaml.SafeDumper):
    """Block style, with short lists and mappings of scalars on one line, as the files are written by hand."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)  # a list inside a mapping is indented, as dbt's own examples are


def _represent_list(dumper: yaml.SafeDumper, data: list):  # noqa: ANN202
    flat = all(not isinstance(v, (list, dict)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat and len(data) <= 8)


def _represent_dict(dumper: yaml.SafeDumper, data: dict):  # noqa: ANN202
    flat = 0 < len(data) <= 3 and all(not isinstance(v, (list, dict)) or
                                      (isinstance(v, list) and all(not isinstance(x, (list, dict)) for x in v))
                                      for v in data.values()) and "name" not in data
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flat)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(dict, _represent_dict)


def document(properties: Path, columns: dict[str, list[str]]) -> list[str]:
    """Give every column of `columns` (model -> its columns in the warehouse) a description in the properties
    file, in the warehouse's order after the hand-written ones; returns the columns the grammar cannot name
    (left without a description, for a person to write)."""
    spec = yaml.safe_load(properties.read_text())
    unknown = []
    for model in spec.get("models", []):
        if model["name"] not in columns:
            continue
        listed = {c["name"]: c for c in model.get("columns", [])}
        for name in columns[model["name"]]:
            entry = listed.setdefault(name, {"name": name})
            if not entry.get("description"):
                text = describe_column(name)
                if text is None:
                    unknown.append(f"{model['name']}.{name}")
                    continue
                entry["description"] = text
        model["columns"] = [{"name": c["name"], **({"description": c["description"]} if "description" in c else {}),
                             **{k: v for k, v in c.items() if k not in ("name", "description")}}
                            for c in listed.values()]
    text = yaml.dump(spec, Dumper=_Dumper, sort_keys=False, width=118, allow_unicode=True)
    # a blank line between models, none between columns
    properties.write_text(re.sub(r"\n(  - name: )", r"\n\n\1", text).replace("models:\n\n", "models:\n"))
    return unknown


def warehouse_columns(connection, schemas: tuple[str, ...] = LAYERS) -> dict[str, list[str]]:  # noqa: ANN001
    """model -> its columns in order, for the models of `schemas` in a built DuckDB warehouse."""
    rows = connection.execute(
        "select table_name, column_name from information_schema.columns where table_schema in "
        f"({', '.join('?' for _ in schemas)}) order by table_name, ordinal_position", list(schemas)).fetchall()
    out: dict[str, list[str]] = {}
    for table, column in rows:
        out.setdefault(table, []).append(column)
    return out


def document_warehouse(engine: str, location: Path, project_dir: Path) -> list[str]:
    """Describe every ADS and samples column of a built warehouse in the dbt project's properties files;
    returns the columns left undescribed (names outside the grammar)."""
    from ml.warehouse.engine import open_warehouse

    with open_warehouse(engine, location) as con:
        columns = warehouse_columns(con)
    return [c for layer in LAYERS for c in document(Path(project_dir) / "models" / layer / f"{layer}.yml", columns)]


def undescribed(engine: str, location: Path, project_dir: Path) -> list[str]:
    """The ADS and samples columns of a built warehouse with no description in the properties files."""
    from ml.warehouse.engine import open_warehouse

    with open_warehouse(engine, location) as con:
        columns = warehouse_columns(con)
    described = set()
    for layer in LAYERS:
        for model in yaml.safe_load((Path(project_dir) / "models" / layer / f"{layer}.yml").read_text())["models"]:
            described |= {(model["name"], c["name"]) for c in model.get("columns", []) if c.get("description")}
    return [f"{m}.{c}" for m, names in columns.items() for c in names if (m, c) not in described]
