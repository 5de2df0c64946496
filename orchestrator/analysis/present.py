"""What a reader sees: the analysis tables in percent and percentage points, and the summary
(instability by density and k, the onset of stability, the winning ticket) that the CLI
prints and the report shows first.

The computed tables (orchestrator.analysis.tables) stay in fractions, as the store's raw
tables are; the written files (Parquet, CSV, HTML) are converted here, once, so every number
a reader sees has one unit: accuracy, error and density in percent (`*_pct`), the error
barrier in percentage points (`*_pp`). Values are rounded to 6 decimals (1e-8 as a
fraction, far below any measurement's resolution), so a CSV reads `0.3`, not
`0.30000000000000004`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.analysis.figure_plan import primary_mode

MISSING = "—"
DECIMALS = 6
PERCENT_PREFIXES = ("acc_", "error_")
RENAME = {"frac_stable": "stable_pairs_pct", "alpha": "alpha"}


def _unit(name: str, modes: set[str]) -> str | None:
    """'pct', 'pp' or None for a computed column name."""
    words = name.split("_")
    if "barrier" in words or name.startswith("delta_") or ("_diff_" in name and "_minus_" in name):  # barrier_mean; delta_acc, acc_diff_B_minus_A
        return "pp"
    if name in ("density", "frac_stable", "flops_fraction") or name.endswith("_density") \
            or name.startswith(PERCENT_PREFIXES):  # channel_density, ticket_density, ...
        return "pct"
    if "error" in words:  # end_error_mean: the end points' mean error
        return "pct"
    for tail in ("_mean", "_std", "_ci_low", "_ci_high"):  # retrain_comparison: <mode>_mean, ...
        if name.endswith(tail) and name[: -len(tail)] in modes:
            return "pct"
    return None


def present(t: pa.Table) -> pa.Table:
    """`t` with fraction columns in percent / percentage points (renamed with the unit) and
    every float rounded to DECIMALS."""
    modes = set(t["mode"].to_pylist()) if "mode" in t.column_names else set()
    modes |= {n.rsplit("_", 1)[0] for n in t.column_names if n.endswith("_n")}
    cols, names = [], []
    for name, col in zip(t.column_names, t.columns):
        if pa.types.is_floating(col.type):
            unit = _unit(name, modes)
            if unit is not None:
                col = pc.multiply(col, 100.0)
                name = RENAME.get(name, f"{name}_{unit}")
            col = pc.round(col, DECIMALS)
        cols.append(col)
        names.append(name)
    return pa.table(cols, names=names)


def header(name: str) -> str:
    """A column name as a table header: words, the unit in brackets."""
    for suffix, unit in (("_pct", " (%)"), ("_pp", " (pp)")):
        if name.endswith(suffix):
            return name[: -len(suffix)].replace("_", " ") + unit
    return {"rewind_iter": "k", "onset_iter": "onset of stability (k)"}.get(name, name.replace("_", " "))


# ---- the summary ----------------------------------------------------------------------------


@dataclass
class KeyTable:
    title: str
    columns: list[str]
    rows: list[list[str]]
    stable: list[list[bool]] = field(default_factory=list)  # per cell: highlight as stable


def _pct(v: float | None, digits: str = ".3g") -> str:
    return MISSING if v is None else f"{100 * v:{digits}}%"


CHANCE = " (chance)"  # a cell whose networks are at chance level: its barrier measures nothing


def key_tables(res, threshold: float, planned_levels: int | None,
               num_classes: int | None = None) -> tuple[list[KeyTable], str | None]:
    """The summary tables and the dense accuracy line. `planned_levels`: pruning levels of the
    plan (None when the store has no plan): "levels measured" counts against them, and a
    lineage that measured all of them and has no match says "none", not "none yet".
    `num_classes`: the chance accuracy 1/C, within the threshold of which cells are marked."""
    out: list[KeyTable] = []
    s = res.instability
    mode = primary_mode(sorted(set(s["mode"].to_pylist())))
    if mode is not None:
        t = s.filter(pc.and_(pc.equal(s["mode"], mode), pc.equal(s["split"], "test")))
        if t.num_rows == 0:
            t = s.filter(pc.equal(s["mode"], mode))
        split = t["split"][0].as_py()
        ks = sorted(set(t["rewind_iter"].to_pylist()))
        earliest = {(r["level"], r["split"]): r for r in res.earliest_stable.to_pylist() if r["mode"] == mode}
        tab = KeyTable(
            title=(f"Error barrier on the {split} set in percentage points (mean ± std over pairs; "
                   f"* stable: below {100 * threshold:g} points), {mode}"
                   + ("; (chance): end points at chance level, no barrier to measure"
                      if any(r.get("at_chance") for r in t.to_pylist()) else "")),
            columns=["weights remaining", *[f"k = {k}" for k in ks], "onset of stability (k)"],
            rows=[])
        for lv in sorted(set(t["level"].to_pylist())):
            cells = {r["rewind_iter"]: r for r in t.filter(pc.equal(t["level"], lv)).to_pylist()}
            d = next((c["density"] for c in cells.values() if c["density"]), None)
            row, flags = [_pct(d) if d else f"level {lv}"], [False]
            for k in ks:
                r = cells.get(k)
                if r is None or r["barrier_mean"] is None:
                    row.append(MISSING)
                    flags.append(False)
                else:
                    std = "" if r["barrier_std"] is None else f" ± {100 * r['barrier_std']:.2f}"
                    chance = CHANCE if r.get("at_chance") else ""
                    row.append(f"{100 * r['barrier_mean']:.2f}{std}{'*' if r['stable'] else ''}{chance}")
                    flags.append(bool(r["stable"]))
            e = earliest.get((lv, split))
            if e is None:
                row.append(MISSING)
            elif e["onset_iter"] is None:
                row.append("none" if e["complete"] else "none yet")
            else:
                row.append(f"{e['onset_iter']}" + ("" if e["complete"] else " (partial)"))
            flags.append(False)
            tab.rows.append(row)
            tab.stable.append(flags)
        out.append(tab)
    d = res.dense
    dense_line = None
    if d["mean"] is not None:
        std = f" ± {100 * d['std']:.2f}" if d["std"] is not None else ""
        dense_line = f"Dense test accuracy: {100 * d['mean']:.2f}%{std} (n = {d['n']} replicates)"
        if num_classes and d["mean"] <= 1.0 / num_classes + threshold:
            dense_line += (f"{CHANCE}: within {100 * threshold:g} points of chance ({100 / num_classes:.3g}% "
                           f"for {num_classes} classes), the dense network learned nothing")
    if res.winning_tickets.num_rows:
        tab = KeyTable(title="Winning ticket: the smallest density whose test accuracy matches the dense network",
                       columns=["mode", "k", "smallest matching density", "test accuracy", "levels measured"],
                       rows=[])
        for r in res.winning_tickets.to_pylist():
            total = planned_levels or r["levels_total"]
            dens = r["smallest_matching_density"]
            if dens is not None:
                text = _pct(dens)
                if r.get("sparsest_measured"):  # the search stopped before accuracy fell
                    text += " (the sparsest level measured: sparser ones may match too)"
            else:  # without a plan in the store, more levels may still come
                text = "none" if planned_levels and r["levels_measured"] >= total else "none yet"
            acc = f"{100 * r['acc_mean']:.2f}%" if r["acc_mean"] is not None else MISSING
            if num_classes and r["acc_mean"] is not None and r["acc_mean"] <= 1.0 / num_classes + threshold:
                acc += CHANCE
            tab.rows.append([r["mode"], str(r["rewind_iter"]), text, acc, f"{r['levels_measured']}/{total}"])
        out.append(tab)
    methods = _methods_key_table(res)
    if methods is not None:
        out.append(methods)
    return out, dense_line


def _methods_key_table(res) -> KeyTable | None:
    """Test accuracy of every family at each density (the comparison pruning at initialization
    asks for), when the experiment prunes at initialization (otherwise the accuracy and
    winning-ticket tables already compare its IMP lineages and controls)."""
    m = getattr(res, "methods", None)
    if m is None or "pai" not in set(getattr(res, "roles", ()) or ()):
        return None
    sparse = m.filter(pc.greater(m["level"], 0))
    families = sorted(set(sparse["family"].to_pylist()), key=lambda f: (not f.startswith("imp_"), f))
    counts: dict[int, set] = {}
    for f, k in zip(sparse["family"].to_pylist(), sparse["rewind_iter"].to_pylist()):
        counts.setdefault(k, set()).add(f)
    k = max(counts, key=lambda k: (len(counts[k]), -k))
    t = sparse.filter(pc.equal(sparse["rewind_iter"], k))
    cells = {(r["family"], r["level"]): r for r in t.to_pylist()}
    levels = sorted({lv for _, lv in cells})
    tab = KeyTable(title=f"Test accuracy (%) of every family at IMP's densities, k = {k} (mean ± std over replicates)",
                   columns=["family", *[_pct(next((c["density"] for (f, l), c in cells.items() if l == lv), None))
                                         for lv in levels]], rows=[])
    for f in families:
        row = [f]
        for lv in levels:
            c = cells.get((f, lv))
            if c is None or c["acc_mean"] is None:
                row.append(MISSING)
            else:
                std = "" if c["acc_std"] is None else f" ± {100 * c['acc_std']:.1f}"
                row.append(f"{100 * c['acc_mean']:.1f}{std}")
        tab.rows.append(row)
    return tab


def print_key_table(console, kt: KeyTable) -> None:
    """One KeyTable on the console: the first column left-aligned, the numbers right."""
    from rich.table import Table

    table = Table(title=kt.title)
    for i, c in enumerate(kt.columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for row in kt.rows:
        table.add_row(*row)
    console.print(table)


def print_key_tables(console, tables: list[KeyTable], dense_line: str | None, branches_planned: bool = True) -> None:
    """`branches_planned`: whether the plan has interpolation pairs; a sweep without branches will
    never measure instability, and says so rather than "yet"."""
    if not tables or not tables[0].title.startswith("Error barrier"):
        console.print("No instability measurements yet." if branches_planned else
                      "No instability measurements: this sweep plans no branches (sweep.branch.seeds is empty).")
    for kt in tables:
        print_key_table(console, kt)
        if kt.title.startswith("Error barrier") and dense_line:
            console.print(dense_line)
    if dense_line and not any(kt.title.startswith("Error barrier") for kt in tables):
        console.print(dense_line)
