"""The self-contained HTML report (figures embedded as base64) and cell formatting.

Order: the summary a paper quotes, the figures, the tables (each with its files), the
definitions of every number, and the experiment's configuration.
"""
from __future__ import annotations

import base64
import html
import math
from datetime import datetime, timezone

import pyarrow as pa

from orchestrator.analysis.figure_plan import TITLES
from orchestrator.analysis.present import MISSING, KeyTable, header

MAX_HTML_ROWS = 2000  # the Parquet/CSV files hold everything; a browser needs less
FOLD_ROWS = 30  # a longer table is folded (one click opens it), so the page stays readable

# For a reader of the report (the rules are implemented in orchestrator/analysis/tables.py).
DEFINITIONS = [
    ("Units", "Accuracy, error and density (weights remaining) are in percent; the error barrier and "
              "any difference of accuracies are in percentage points (pp). The Parquet and CSV files "
              "use the same units (column names end in _pct or _pp)."),
    ("Error barrier", "For two children trained from the same weights with different data orders, "
                      "the error along the straight line between them, θ(α) = (1 − α) θ_A + α θ_B, "
                      "is measured at evenly spaced α in [0, 1]. The barrier is the largest error "
                      "on the path minus the mean of the two end points' errors."),
    ("Stable", "A cell (mode, density, k, split) is stable when its mean barrier over replicates and "
               "pairs is below the threshold (2 pp unless --threshold says otherwise; Frankle et al. 2020)."),
    ("Onset of stability", "Per density: the smallest measured rewinding point k from which every "
                           "larger measured k is stable (a stable k followed by an unstable one is not "
                           "an onset); 'partial' while a k of the grid is not measured yet, 'none' when "
                           "the largest measured k is not stable."),
    ("At chance", "A cell whose end points' mean error is within the threshold of chance (1 − 1/C for "
                  "C classes) is never stable: networks that learned nothing have no barrier to measure."),
    ("Dense standard deviation", "The sample standard deviation of the dense networks' test accuracy "
                                 "over replicates. Replicates differ only in their init seed (every "
                                 "lineage trains with the sweep's one data-order seed), so it measures "
                                 "the spread due to initialisation alone."),
    ("Matching the dense network", "A sparse network matches when its mean test accuracy is at least "
                                   "the dense networks' mean minus one sample standard deviation "
                                   "over replicates."),
    ("Winning ticket", "Per retrain mode and k: the smallest density that matches. 'none yet' while "
                       "levels of the plan are still unmeasured, 'none' once all are."),
    ("Retrain modes", "rewind: weights rewound to iteration k, trained k → T; lr_rewind: trained weights "
                      "kept, learning-rate schedule rewound to k; finetune: trained weights kept, T − k "
                      "more iterations at a small fixed learning rate; random_prune and random_reinit: "
                      "the controls (a random mask with the same per-layer counts; IMP's mask with "
                      "fresh weights). Modes are compared at equal total training iterations."),
    ("95% interval", "Columns *_ci_low and *_ci_high: mean ± t(0.975, n − 1) · std / √n over the n replicates "
                     "(Student's t: with 2 to 5 replicates the normal interval covers far less than 95%); none "
                     "with one replicate. The barrier's interval is over the replicates' mean barriers (pairs of "
                     "one replicate share their parent). A difference (an ablation against its method) has "
                     "Welch's t interval."),
    ("Verdict", "Each published number (the experiment's reference files) against our cell of the same family, "
                "k and density (within 2%): not comparable when the model, data set, granularity or epochs "
                "differ, or we have no such cell or fewer than 2 replicates; consistent when the 95% Welch "
                "interval of ours minus published holds 0 (a published value without a spread adds none), "
                "not consistent otherwise. A secondary source says so."),
    ("Missing values", f"A cell that is not measured yet is shown as {MISSING}, never as 0."),
]


def fmt(v) -> str:
    """One cell as text; missing values are an em dash, never 0."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) >= 0.01 or v == 0 else f"{v:.2g}"
    return str(v)


def table_html(t: pa.Table) -> str:
    head = "".join(f"<th>{html.escape(header(c))}</th>" for c in t.column_names)
    rows = []
    for r in t.slice(0, MAX_HTML_ROWS).to_pylist():
        cells = []
        for v in r.values():
            cls = ' class="missing"' if fmt(v) == MISSING else ""
            cells.append(f"<td{cls}>{html.escape(fmt(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = (f"<p>… {t.num_rows - MAX_HTML_ROWS} more rows in the Parquet/CSV file.</p>"
            if t.num_rows > MAX_HTML_ROWS else "")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}"


def key_table_html(kt: KeyTable) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in kt.columns)
    rows = []
    for i, row in enumerate(kt.rows):
        flags = kt.stable[i] if i < len(kt.stable) else [False] * len(row)
        cells = []
        for v, ok in zip(row, flags):
            cls = "missing" if v == MISSING else ("stable" if ok else "")
            cells.append(f"<td class='{cls}'>{html.escape(v)}</td>" if cls else f"<td>{html.escape(v)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<h3>{html.escape(kt.title)}</h3><table class='key'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;font-size:12px;margin-bottom:1em}
table.key{font-size:14px}td.stable{background:#e6f4ea}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}
td.missing{color:#a00;text-align:center}img{max-width:100%;border:1px solid #ddd}
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}
dt{font-weight:bold;margin-top:.5em}nav a{margin-right:1em}small{color:#555}
summary{cursor:pointer;color:#0645ad;margin-bottom:1em}"""


def render(experiment: str, progress: str, notes: list[str], key: list[KeyTable],
           dense_line: str | None, config: dict[str, str], figures: dict[str, bytes],
           figure_files: dict[str, list[str]], tables: list[tuple[str, str, pa.Table]]) -> str:
    """tables: (file stem, title, presented table). Every figure and table named in words."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>lth analyze {html.escape(experiment)}</title><style>{CSS}</style></head><body>",
             f"<h1>Stability analysis: {html.escape(experiment)}</h1>",
             f"<p>Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}. "
             f"<b>Progress:</b> {html.escape(progress)}. Missing cells (not measured yet) are "
             f"shown as {MISSING}.</p>",
             "<nav><a href='#summary'>Summary</a><a href='#figures'>Figures</a>"
             "<a href='#tables'>Tables</a><a href='#definitions'>Definitions</a>"
             "<a href='#configuration'>Configuration</a></nav>"]
    for n in notes:
        parts.append(f"<p><b>Note:</b> {html.escape(n)}</p>")
    parts.append("<h2 id='summary'>Summary</h2>")
    if not key:
        parts.append("<p>No instability or accuracy measurements yet.</p>")
    for i, kt in enumerate(key):
        parts.append(key_table_html(kt))
        if i == 0 and dense_line:
            parts.append(f"<p>{html.escape(dense_line)}.</p>")
    if dense_line and not key:
        parts.append(f"<p>{html.escape(dense_line)}.</p>")
    parts.append("<h2 id='figures'>Figures</h2>")
    for name, png in figures.items():
        b64 = base64.b64encode(png).decode("ascii")
        title = TITLES.get(name, name.replace("_", " "))
        files = ", ".join(figure_files.get(name, [f"{name}.png"]))
        parts.append(f"<h3 id='fig-{name}'>{html.escape(title)} <small>({html.escape(files)})</small></h3>"
                     f"<img alt='{html.escape(title)}' src='data:image/png;base64,{b64}'>")
    parts.append("<h2 id='tables'>Tables</h2>")
    for stem, title, t in tables:
        rows = f"{t.num_rows} row" + ("" if t.num_rows == 1 else "s")
        parts.append(f"<h3 id='table-{stem}'>{html.escape(title)} "
                     f"<small>({stem}.parquet, {stem}.csv; {rows})</small></h3>")
        if t.num_rows > FOLD_ROWS:
            parts.append(f"<details><summary>Show the {rows}</summary>{table_html(t)}</details>")
        else:
            parts.append(table_html(t))
    parts.append("<h2 id='definitions'>Definitions</h2><dl>")
    for term, text in DEFINITIONS:
        parts.append(f"<dt>{html.escape(term)}</dt><dd>{html.escape(text)}</dd>")
    parts.append("</dl><h2 id='configuration'>Configuration</h2>")
    if not config:
        parts.append("<p>No configuration file in the store for this experiment.</p>")
    for name, text in config.items():
        parts.append(f"<h3>{html.escape(name)}</h3><pre>{html.escape(text)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
