"""One self-contained HTML page per task run, for the people who use the crowds rather than build them: the
comparison table with its intervals, the backtest's curves of every model against the heuristic floors and
the ceiling (ROC, recall@N, cumulative gain, lift, calibration), the published crowds' sizes, and how the crowds
published earlier did once the log held their window (ml.crowd_outcomes).

Everything is inside the file (charts are SVG in data URIs, no script, no remote font or stylesheet), so it
can be mailed, attached to a ticket or opened from a bucket. The numbers are the ones in the MLflow store:
the table is ml.report's, the curves each run's `curves.json` (ml.evaluate.curves).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import logging
import math
from pathlib import Path

import pandas as pd

from ml.report import LEGEND, is_reference, rows, verdicts
from ml.task import Task, TaskPaths

log = logging.getLogger(__name__)
# in every report: the mark that lets a rerun replace a file it wrote, and only such a file
GENERATOR = '<meta name="generator" content="Purchase Crowd report">'

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #1d1d1f; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
p.settings, p.legend { color: #555; font-size: 0.85rem; }
table { border-collapse: collapse; font-size: 0.8rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.45rem; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; white-space: normal; min-width: 8rem; }
tr.reference td { color: #666; font-style: italic; }
td .ci { color: #666; font-size: 0.72rem; font-weight: normal; }
tr.below td:first-child { color: #b00020; }
tr.champion td:first-child { font-weight: 600; border-left: 4px solid #2a7ae2; }
.warning { background: #fff4e5; border-left: 4px solid #f0a020; padding: 0.4rem 0.8rem; margin: 0.3rem 0; }
.charts { display: flex; flex-wrap: wrap; gap: 1rem; }
.charts figure { margin: 0; width: 580px; max-width: 100%; } .charts img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.8rem; text-align: center; }
.scroll { overflow-x: auto; }
"""


def load_curves(table: pd.DataFrame) -> pd.DataFrame:
    """Every model's curves from its run (the model's own series), and the floors' and the ceiling's from the
    first run that logged them; a run logged before curves were recorded adds nothing."""
    import mlflow

    from ml.evaluate.curves import CURVE_COLUMNS, CURVES_ARTIFACT

    own, references = [], None
    for _, r in table[~is_reference(table["model"]) & (table["run_id"].fillna("") != "")].iterrows():
        try:
            frame = mlflow.load_table(CURVES_ARTIFACT, run_ids=[r["run_id"]])
        except Exception:  # noqa: BLE001  (MLflow raises a bare MlflowException when a run has no such table)
            log.info("run %s of %s logged no curves", r["run_id"], r["model"])
            continue
        frame = frame.drop(columns=[c for c in frame.columns if c not in CURVE_COLUMNS])
        own.append(frame[frame["series"] == r["model"]])
        if references is None:
            references = frame[is_reference(frame["series"])]
    parts = [*own, *([references] if references is not None else [])]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(CURVE_COLUMNS))


def latest_crowds(paths: TaskPaths) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The newest published crowds (crowds/ds=DATE/crowds.parquet) and their expected buyers per target."""
    from ml.crowds import expected_buyers_path, latest_published

    published = latest_published(paths)
    if published is None:
        return None
    crowds = pd.read_parquet(published)
    expected_file = expected_buyers_path(published)
    expected = pd.read_parquet(expected_file) if expected_file.exists() else pd.DataFrame()
    return crowds, expected


def measured_crowds(paths: TaskPaths) -> list[pd.DataFrame]:
    """The per-target outcomes of every published date measured so far (crowd outcomes), oldest first."""
    from ml.crowd_outcomes import outcomes_path

    files = sorted(outcomes_path(p) for p in paths.crowds.glob("ds=*/crowds.parquet"))
    return [pd.read_parquet(f) for f in files if f.exists()]


def _outcomes_html(measured: list[pd.DataFrame], task: Task) -> str:
    """One row per measured date: the crowds' buyers against those expected, precision, recall and lift with
    their intervals over targets (ml.crowd_outcomes.pooled)."""
    from ml.crowd_outcomes import pooled

    if not measured:
        return (f"<p>No published crowds measured yet: <code>crowd outcomes --task {html.escape(task.name)}</code> "
                "measures each once the log holds the days it predicted (the periods DAG does at each run).</p>")

    def figure(value: float, interval, digits: int, suffix: str = "") -> str:  # noqa: ANN001
        if not math.isfinite(value):
            return "–"
        shown = f"{value:.{digits}f}{suffix}"
        return shown + (f"<br><small>{interval.low:.{digits}f}–{interval.high:.{digits}f}</small>" if interval else "")

    body = []
    for table in measured:
        sums, f, ci = pooled(table)
        first = table.iloc[0]
        window = f"{first['window_start']} .. {pd.Timestamp(first['window_end']).date() - dt.timedelta(days=1)}"
        cells = [html.escape(window), html.escape(f"{first['model']} v{first['model_version']}"),
                 f"{len(table):,}", f"{sums['crowd_size']:,.0f}",
                 f"{sums['buyers_in_crowd']:,.0f} ({sums['expected_buyers_in_crowd']:,.1f})",
                 figure(f["precision"], ci.get("precision"), 4), figure(f["recall"], ci.get("recall"), 4),
                 figure(f["lift"], ci.get("lift"), 2, "x")]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("window", "model", task.targets_word, "users", "bought (expected)",
                                             "precision", "recall", "lift"))
    return (f'<div class="scroll"><table id="outcomes"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}'
            "</tbody></table></div><p class=\"legend\">Each published date whose window the log holds: its crowds' "
            "users who bought in the window, against the buyers their scores expected; precision; recall among every "
            "buyer of the targets; lift, the crowds' precision over the scored population's own rate. Pooled over "
            "the targets, with 95 % intervals over resampled targets.</p>")


def _table_html(table: pd.DataFrame) -> str:
    columns, shown = rows(table)
    # a long name (valid_auc_per_target) may break after its underscores
    head = "".join(f"<th>{html.escape(c).replace('_', '_<wbr>')}</th>" for c in ["model", *columns, "train s"])
    references, body = set(table.loc[is_reference(table["model"]), "model"]), []
    for r, name, cells in shown:
        tds = [f"<td><strong>{_two_lines(t)}</strong></td>" if bold else f"<td>{_two_lines(t)}</td>"
               for t, bold in cells]
        seconds = r.get("train_s")
        tds.append(f"<td>{'–' if seconds is None or pd.isna(seconds) else f'{seconds:.0f}'}</td>")
        kind = "reference" if r["model"] in references else "below" if r.get("below_floor") is True else "model"
        kind += " champion" if r.get("champion") is True else ""
        body.append(f'<tr class="{kind}"><td>{html.escape(name)}</td>{"".join(tds)}</tr>')
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _two_lines(text: str) -> str:
    """A figure over its interval or Monte Carlo error: the table's 15 columns on one line each were twice the
    page's width, and a reader saw the first six without scrolling."""
    value, sep, rest = text.partition(" (") if " (" in text else text.partition(" ± ")
    if not sep:
        return html.escape(text)
    return f'{html.escape(value)}<br><span class="ci">{html.escape(sep.strip() + rest)}</span>'


def _charts_html(curves: pd.DataFrame, by: str) -> str:
    from ml.evaluate.plots import curve_figures, svg

    if curves.empty:
        return "<p>No curves: the runs in this table were logged before curves were recorded; train again.</p>"
    captions = {"roc": "ROC on the backtest", "recall_at_n": "mean recall@N over the ranked groups",
                "gain": "cumulative gain: buyers found in the top share of the scored pairs",
                "lift": "lift: the gain over random targeting", "calibration": "calibration (reliability)"}
    figures = []
    for name, fig in curve_figures(curves, by).items():
        data = base64.b64encode(svg(fig).encode()).decode()
        figures.append(f'<figure><img id="chart-{name}" alt="{html.escape(captions[name])}" '
                       f'src="data:image/svg+xml;base64,{data}"><figcaption>{html.escape(captions[name])}'
                       f"</figcaption></figure>")
    return f'<div class="charts">{"".join(figures)}</div>'


def _crowds_html(crowds: tuple[pd.DataFrame, pd.DataFrame] | None, task: Task, champion: dict | None) -> str:
    if crowds is None:
        return f"<p>No forward crowds published yet (<code>crowd score --task {html.escape(task.name)}</code>).</p>"
    frame, expected = crowds
    if frame.empty:
        return "<p>The latest crowds are empty: the forward population held no pair.</p>"
    sizes = frame.groupby("target_id").size()
    first = frame.iloc[0]
    facts = {
        "model": f"{first['model']} (version {first['model_version']}, run {first['run_id'] or '-'})",
        "features as of": str(first["feature_date"])[:10] + (f" (warehouse build {first['data_build']})"
                                                             if first.get("data_build") else ""),
        "window predicted": f"{str(first['window_start'])[:10]} to {str(first['window_end'])[:10]} (exclusive)",
        f"{task.targets_word} with a crowd": f"{len(sizes):,}",
        "users per crowd": f"{sizes.min():,} to {sizes.max():,} (median {sizes.median():,.0f})",
        "rows (target, user)": f"{len(frame):,}; {frame['user_id'].nunique():,} distinct users",
    }
    top = ""
    if not expected.empty:
        facts["buyers to expect"] = (f"{expected['expected_buyers_in_crowd'].sum():,.1f} in the crowds, "
                                     f"{expected['expected_buyers_population'].sum():,.1f} in the whole scored "
                                     "population (sums of calibrated scores)")
        best = expected.sort_values("expected_buyers_in_crowd", ascending=False).head(15)
        rows = "".join(f"<tr><td>{int(r.target_id)}</td><td>{int(r.crowd_size):,}</td><td>{int(r.population):,}</td>"
                       f"<td>{r.expected_buyers_in_crowd:,.2f}</td><td>{r.expected_buyers_population:,.2f}</td></tr>"
                       for r in best.itertuples())
        top = (f"<p>The {len(best)} {task.targets_word} with the most buyers to expect in their crowd:</p>"
               "<table><thead><tr>"
               f"<th>{task.target}</th><th>crowd</th><th>population</th><th>expected in crowd</th>"
               f"<th>expected in population</th></tr></thead><tbody>{rows}</tbody></table>")
    stale = ""
    trained_on = first.get("model_build") or ""
    if trained_on and first.get("data_build") and trained_on != first["data_build"]:
        facts["model"] += f", trained on build {trained_on}"
        stale = (f'<div class="warning">These crowds were scored by {html.escape(str(first["model"]))}, trained on '
                 f"warehouse build {html.escape(trained_on)}, on features of build {html.escape(first['data_build'])}"
                 " (other data): the champion of earlier data serves until a model is trained on this data, or a "
                 "model was named with <code>crowd score --model</code>.</div>")
    elif champion and first["run_id"] != champion["run_id"]:  # published before the champion of the table was chosen
        stale = (f'<div class="warning">These crowds were scored by {html.escape(str(first["model"]))}, not by the '
                 f"current champion {html.escape(champion['model'])} (version {html.escape(champion['version'])}): "
                 f"<code>crowd score --task {html.escape(task.name)}</code> publishes the champion's.</div>")
    listed = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts.items())
    return f'{stale}<table class="facts" id="crowd-facts"><tbody>{listed}</tbody></table>{top}'


def render(task: Task, table: pd.DataFrame, curves: pd.DataFrame,
           crowds: tuple[pd.DataFrame, pd.DataFrame] | None, run: str = "",
           measured: list[pd.DataFrame] | None = None) -> str:
    """The report's HTML text."""
    title = f"Purchase Crowd: {task.name}"  # the run's id (manual__2026-11-29T07:18:54.497450+00:00) is said below
    by = html.escape(f" by the training DAG's run {run}" if run else "")
    warnings = "".join(f'<div class="warning">{html.escape(w)}</div>' for w in verdicts(table))
    made = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    note = table.attrs.get("champion_note")
    references = "the heuristic floors (grey, dashed)"
    if (table["model"] == "oracle (ceiling)").any():  # a generated log's; a loaded one has no ceiling to draw
        references += " and the generator's ceiling (black, dotted)"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
{GENERATOR}
<title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(task.about())} Target: {html.escape(task.target)}. Made {made} from the MLflow store{by}.</p>
<p class="settings">{html.escape(table.attrs.get("settings", ""))}</p>
{warnings}
<h2 id="comparison">Models on the backtest {html.escape(str(task.backtest))}</h2>
{_table_html(table)}
{f'<p class="settings">{html.escape(note)}</p>' if note else ""}
<p class="legend">{html.escape(LEGEND)}</p>
<h2 id="curves">Curves</h2>
<p class="legend">Every model against {references} on the same backtest rows.</p>
{_charts_html(curves, task.ranked_by)}
<h2 id="crowds">Crowds</h2>
{_crowds_html(crowds, task, table.attrs.get("champion"))}
<h2 id="outcomes">How published crowds did</h2>
{_outcomes_html(measured or [], task)}
</body></html>
"""


def write_report(task: Task, paths: TaskPaths, out: Path | None = None, run: str = "",
                 table: pd.DataFrame | None = None) -> Path:
    """The task's report from the MLflow store (`table`: ml.report.latest_runs, read when not given) and its
    latest crowds, written atomically to `out` (default: the task's reports/report.html)."""
    from ml.outputs import write_text_atomically
    from ml.report import latest_runs

    table = latest_runs(paths, task) if table is None else table
    text = render(task, table, load_curves(table), latest_crowds(paths), run, measured_crowds(paths))
    target = out or paths.reports / "report.html"
    return write_text_atomically(target, text, GENERATOR)
