"""The summary tables for a paper: Markdown (`summary.md`) and LaTeX (`summary.tex`, booktabs),
the same rows and words as the console and the report's summary (present.KeyTable)."""
from __future__ import annotations

from orchestrator.analysis.present import KeyTable

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "Δ": r"$\Delta$", "—": "---", "–": "--", "×": r"$\times$", "α": r"$\alpha$", "−": "$-$"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    for sym, tex in _LATEX_SYMBOLS.items():
        out = out.replace(sym, tex)
    return out


def markdown(tables: list[KeyTable], notes: list[str] = ()) -> str:
    parts = []
    for kt in tables:
        parts.append(f"**{kt.title}**\n")
        cells = lambda row: "| " + " | ".join(str(c).replace("|", r"\|") for c in row) + " |"  # noqa: E731
        parts.append(cells(kt.columns))
        parts.append("|" + "|".join([" --- "] + [" ---: "] * (len(kt.columns) - 1)) + "|")
        parts += [cells(r) for r in kt.rows]
        parts.append("")
    parts += [f"{n}\n" for n in notes if n]
    return "\n".join(parts)


def latex(tables: list[KeyTable], notes: list[str] = ()) -> str:
    """One `table` environment per summary table (needs \\usepackage{booktabs})."""
    parts = ["% lth analyze: the summary tables (\\usepackage{booktabs})"]
    for kt in tables:
        parts += ["\\begin{table}[t]", "\\centering", f"\\caption{{{latex_escape(kt.title)}}}",
                  "\\begin{tabular}{l" + "r" * (len(kt.columns) - 1) + "}", "\\toprule",
                  " & ".join(latex_escape(str(c)) for c in kt.columns) + " \\\\", "\\midrule"]
        parts += [" & ".join(latex_escape(str(c)) for c in row) + " \\\\" for row in kt.rows]
        parts += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    parts += [latex_escape(n) + "\n" for n in notes if n]
    return "\n".join(parts) + "\n"
