"""The self-contained HTML report (figures embedded as base64) and cell formatting."""
from __future__ import annotations

import base64
import html
import math
from datetime import datetime, timezone

import pyarrow as pa

MISSING = "—"
MAX_HTML_ROWS = 2000  # the Parquet/CSV files hold everything; a browser needs less


def fmt(v) -> str:
    """One cell as text; missing values are an em dash, never 0."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def table_html(t: pa.Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.column_names)
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


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;font-size:12px;margin-bottom:1em}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}
td.missing{color:#a00;text-align:center}img{max-width:100%;border:1px solid #ddd}
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}"""


def render(experiment: str, progress: str, notes: list[str], definitions: str,
           config: dict[str, str], figures: dict[str, bytes],
           tables: list[tuple[str, str, pa.Table]]) -> str:
    """tables: (file stem, title, table). Every figure and table named in the document."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>lth analyze {html.escape(experiment)}</title><style>{CSS}</style></head><body>",
             f"<h1>Stability analysis: {html.escape(experiment)}</h1>",
             f"<p>Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}. "
             f"<b>Progress:</b> {html.escape(progress)}. Missing cells (not measured yet) are "
             f"shown as {MISSING}.</p>"]
    for n in notes:
        parts.append(f"<p><b>Note:</b> {html.escape(n)}</p>")
    parts.append("<h2>Figures</h2>")
    for name, png in figures.items():
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(f"<h3 id='fig-{name}'>{html.escape(name)}</h3>"
                     f"<img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>")
    parts.append("<h2>Tables</h2>")
    for stem, title, t in tables:
        parts.append(f"<h3 id='table-{stem}'>{html.escape(title)} "
                     f"<small>({stem}.parquet, {stem}.csv; {t.num_rows} rows)</small></h3>")
        parts.append(table_html(t))
    parts.append(f"<h2>Definitions</h2><pre>{html.escape(definitions)}</pre>")
    parts.append("<h2>Configuration</h2>")
    if not config:
        parts.append("<p>No configuration file in the store for this experiment.</p>")
    for name, text in config.items():
        parts.append(f"<h3>{html.escape(name)}</h3><pre>{html.escape(text)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
