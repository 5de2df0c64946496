"""`lth analyze A B ...`: several experiments (fp32 against bf16, two rewinding schemes, two
learning rates) on the same axes, in one report (STORE/reports/compare/A-vs-B/ by default).

Each experiment is read and computed exactly as `lth analyze NAME` does; only the
presentation differs: the summary first (one line per experiment, the fields in which their
configs differ, a side-by-side table of barrier and accuracy per cell with each experiment's
difference from the first, each experiment's summary tables), then the figures, whose legends
say what differs (`demo (lr 0.05)`). The side-by-side table is written as Parquet and CSV
(`side_by_side.*`) and every summary table as Markdown and LaTeX (`summary.md`, `summary.tex`)
beside the figures.
"""
from __future__ import annotations

import html
import os
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from orchestrator.analysis import _check_args, _FigureCache, _Out, compute, consoles, figures as figs
from orchestrator.analysis.figure_plan import primary_mode
from orchestrator.analysis.present import KeyTable, key_tables, present, print_key_table, print_key_tables
from orchestrator.analysis.figure_plan import TITLES
from orchestrator.analysis.parts import UnreadablePart
from orchestrator.analysis.read import ScanCache, Store, read_num_classes, read_progress, read_raw
from orchestrator.analysis.report import CSS, key_table_html


def compare(store_root: str, experiments: list[str], out_dir: str | None = None, threshold: float = 0.02,
            console=None, formats: tuple[str, ...] = ("png",), titles: bool = True, figsize: str | None = None) -> int:
    console, errors = consoles(console)
    if len(set(experiments)) != len(experiments):
        errors.print(f"[red]error:[/red] name: an experiment is named twice ({' '.join(experiments)})")
        return 2
    store = Store.open(store_root)
    for name in experiments:
        problem = _check_args(store, name, threshold, "disabled")
        if problem:
            errors.print(f"[red]error:[/red] {problem}")
            return 2
    results, progress, keys, runs = {}, {}, {}, {}
    for name in experiments:
        cache = ScanCache(store, store.path("reports", name, ".cache"))
        try:
            raw = read_raw(store, name, cache)  # the current plan's jobs only, as analyze reads them
        except UnreadablePart as e:
            errors.print(f"[red]error:[/red] {name}: {e}")
            return 2
        res = compute(*raw, threshold, num_classes=read_num_classes(store, name, cache), path=False)  # no path figure
        results[name] = res
        runs[name] = raw[0]
        recorded = set(raw[0].column("job_id").to_pylist()) | set(raw[1].column("pair_id").to_pylist())
        progress[name] = read_progress(store, name, res.n_train_runs, res.n_pairs, recorded)
        keys[name] = key_tables(res, threshold, progress[name].planned_levels)

    differences = config_differences(store, experiments)
    labels = legend_labels(experiments, differences)
    side = side_by_side(results, experiments)
    side_key = side_by_side_key_table(side, experiments)
    diffs = differences_table(runs, experiments)
    diff_key = differences_key_table(diffs, experiments[0])
    # the summary first: how they differ and the side-by-side cells, then each one's tables
    _print_differences(console, experiments, differences)
    print_key_table(console, side_key)
    if diffs.num_rows:
        print_key_table(console, diff_key)
    for name in experiments:
        console.rule(f"{name}: {progress[name].summary()}")
        print_key_tables(console, *keys[name], branches_planned=progress[name].branches_planned())

    label = "-vs-".join(experiments)
    if out_dir is None:
        out = _Out(store.fs, store.path("reports", "compare", label))
    else:
        out = _Out(pafs.LocalFileSystem(), os.path.abspath(out_dir))
    side_presented = present(side)
    out.write_table("side_by_side", side_presented)
    out.write_table("differences", present(diffs))
    from orchestrator.analysis.transfer import transfer_side_by_side, transfer_table

    moved = transfer_side_by_side({n: transfer_table(store.results.read_table("runs", n).to_pylist())
                                   for n in experiments}, experiments)
    if moved is not None:
        out.write_table("transfer_side_by_side", present(moved))
        console.print("Ticket transfer side by side: transfer_side_by_side.csv")
    from orchestrator.analysis import write_summary_exports

    all_keys = [side_key] + ([diff_key] if diffs.num_rows else []) + [KeyTable(f"{n}: {kt.title}", kt.columns, kt.rows) for n in experiments for kt in keys[n][0]]
    write_summary_exports(out, all_keys, None)
    fcache = _FigureCache(out, formats, titles, figsize)
    drawn = {}
    inst = {n: r.instability for n, r in results.items()}
    accs = {n: (r.accuracy, r.dense) for n, r in results.items()}
    wcs = {n: r.methods for n, r in results.items()}
    for name, make, inputs in (
        ("compare_instability", lambda: figs.compare_instability(inst, threshold, labels),
         (list(inst), *inst.values(), threshold, labels)),
        ("compare_accuracy", lambda: figs.compare_accuracy(accs, labels),
         (list(accs), *(a for a, _ in accs.values()), [d for _, d in accs.values()], labels)),
        ("compare_weight_correlation", lambda: figs.compare_weight_correlation(wcs),
         (list(wcs), *[t for t in wcs.values() if t is not None])),
    ):
        got = fcache.get(name, make, *inputs)
        if got is not None:
            drawn[name] = got
    fcache.save()

    import base64

    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>lth analyze {html.escape(' '.join(experiments))}</title><style>{CSS}</style></head><body>",
             f"<h1>Comparison: {html.escape(', '.join(experiments))}</h1>",
             f"<p>Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}. Each experiment's own "
             f"report (<code>lth analyze NAME</code>) has its full tables.</p><ul>"]
    for n in experiments:
        parts.append(f"<li><b>{html.escape(n)}</b>: {html.escape(progress[n].summary())}</li>")
    parts.append("</ul>")
    parts.append(_differences_html(experiments, differences))
    parts.append("<h2 id='side-by-side'>Side by side</h2>")
    parts.append(key_table_html(side_key))
    if diffs.num_rows:
        parts.append(key_table_html(diff_key))
    parts.append("<p><small>side_by_side.parquet, side_by_side.csv; differences.parquet, differences.csv; "
                 "every summary table as "
                 "summary.md and summary.tex</small></p>")
    parts.append("<h2>Summaries</h2>")
    for n in experiments:
        tables, dense_line = keys[n]
        parts.append(f"<h3>{html.escape(n)}</h3>")
        for kt in tables:
            parts.append(key_table_html(kt))
        if dense_line:
            parts.append(f"<p>{html.escape(dense_line)}.</p>")
    parts.append("<h2>Figures</h2>")
    for name, got in drawn.items():
        b64 = base64.b64encode(got["png"]).decode("ascii")
        files = ", ".join(f"{name}.{f}" for f in got)
        parts.append(f"<h3>{html.escape(TITLES[name])} <small>({files})</small></h3>"
                     f"<img alt='{html.escape(TITLES[name])}' src='data:image/png;base64,{b64}'>")
    parts.append("</body></html>")
    out.write("report.html", "\n".join(parts).encode("utf-8"))
    console.print(f"Report: {out.file('report.html')}")
    return 0


# ---- side by side ------------------------------------------------------------------------------


def side_by_side(results: dict, experiments: list[str]) -> pa.Table:
    """One row per cell (level, k) any experiment measured, of each one's primary mode on the
    test split: density, and per experiment its mean barrier and mean test accuracy (fractions;
    `present` turns them into pp and %), and for every experiment after the first its
    difference from the first (this minus first; null where either is missing)."""
    cells: dict[tuple[int, int], dict] = {}
    for name in experiments:
        res = results[name]
        mode = primary_mode(sorted(set(res.instability["mode"].to_pylist()) | set(res.accuracy["mode"].to_pylist())))
        for r in res.instability.to_pylist():
            if r["mode"] == mode and r["split"] == "test":
                c = cells.setdefault((r["level"], r["rewind_iter"]), {"density": r["density"]})
                c[("barrier", name)] = r["barrier_mean"]
        for r in res.accuracy.to_pylist():
            if r["mode"] == mode:
                c = cells.setdefault((r["level"], r["rewind_iter"]), {"density": r["density"]})
                c[("acc", name)] = r["acc_mean"]
                c["density"] = c["density"] or r["density"]
        for (level, _k), c in cells.items():
            if level == 0:  # the dense network: one accuracy, whatever k its children rewind to
                c[("acc", name)] = res.dense["mean"]
    first = experiments[0]
    cols: dict[str, list] = {"level": [], "rewind_iter": [], "density": []}
    for what in ("barrier", "acc"):
        for name in experiments:
            cols[f"{what}_{name}"] = []
        for name in experiments[1:]:
            cols[f"{what}_diff_{name}_minus_{first}"] = []
    for (level, k), c in sorted(cells.items()):
        cols["level"].append(level)
        cols["rewind_iter"].append(k)
        cols["density"].append(c["density"])
        for what in ("barrier", "acc"):
            for name in experiments:
                cols[f"{what}_{name}"].append(c.get((what, name)))
            for name in experiments[1:]:
                a, b = c.get((what, first)), c.get((what, name))
                cols[f"{what}_diff_{name}_minus_{first}"].append(None if a is None or b is None else b - a)
    types = {"level": pa.int64(), "rewind_iter": pa.int64()}
    return pa.table({n: pa.array(v, types.get(n, pa.float64())) for n, v in cols.items()})


def differences_table(runs: dict[str, pa.Table], experiments: list[str]) -> pa.Table:
    """Per later experiment and per (family, k, level) both measured, every family (IMP's
    lineages, the controls, pruning at initialization and its ablations): the test accuracy
    of each (mean, n), the difference (this minus the first) with its 95% Welch t interval, and
    the paired difference over the replicates both ran with the same init seed (a replicate is
    named by its init seed), whose paired t interval removes the init's share of the noise."""
    from orchestrator.analysis import methods as M
    from orchestrator.analysis import tables as T
    from orchestrator.analysis.stats import paired, welch

    def cells(t: pa.Table) -> dict[tuple, dict]:
        out: dict[tuple, dict] = {}
        f = M.add_family(T.add_mode(t))
        for fam, k, lv, d, rep, acc in zip(*(f[c].to_pylist() for c in (
                "family", "rewind_iter", "level", "density", "replicate", "test_accuracy"))):
            if acc is not None:
                c = out.setdefault((fam, 0 if fam == "dense" else k, lv), {"density": d, "acc": {}})
                c["acc"][rep] = acc
        return out

    first = experiments[0]
    base = cells(runs[first])
    rows = []
    for name in experiments[1:]:
        other = cells(runs[name])
        for key in sorted(set(base) & set(other), key=lambda t: (t[0] != "dense", t)):
            a, b = base[key]["acc"], other[key]["acc"]
            ma, mb = sum(a.values()) / len(a), sum(b.values()) / len(b)
            sa = _std(list(a.values()))
            sb = _std(list(b.values()))
            d, lo, hi = welch(mb, sb, len(b), ma, sa, len(a))
            pd, plo, phi, pn = paired([b[r] - a[r] for r in sorted(set(a) & set(b))])
            rows.append({"experiment": name, "minus": first, "family": key[0], "rewind_iter": key[1],
                         "level": key[2], "density": base[key]["density"], "acc_first_mean": ma,
                         "n_first": len(a), "acc_this_mean": mb, "n_this": len(b), "delta_acc": d,
                         "delta_acc_ci_low": lo, "delta_acc_ci_high": hi, "delta_acc_paired": pd,
                         "delta_acc_paired_ci_low": plo, "delta_acc_paired_ci_high": phi, "n_paired": pn})
    schema = pa.schema([("experiment", pa.string()), ("minus", pa.string()), ("family", pa.string()),
                        ("rewind_iter", pa.int64()), ("level", pa.int64()), ("density", pa.float64()),
                        ("acc_first_mean", pa.float64()), ("n_first", pa.int64()), ("acc_this_mean", pa.float64()),
                        ("n_this", pa.int64()), ("delta_acc", pa.float64()), ("delta_acc_ci_low", pa.float64()),
                        ("delta_acc_ci_high", pa.float64()), ("delta_acc_paired", pa.float64()),
                        ("delta_acc_paired_ci_low", pa.float64()), ("delta_acc_paired_ci_high", pa.float64()),
                        ("n_paired", pa.int64())])
    return pa.Table.from_pylist(rows, schema=schema)


def _std(xs: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5


def differences_key_table(diffs: pa.Table, first: str) -> KeyTable:
    def iv(d, lo, hi):
        if d is None:
            return "—"
        return f"{100 * d:+.2f}" + ("" if lo is None else f" [{100 * lo:+.2f}, {100 * hi:+.2f}]")

    kt = KeyTable(title=(f"Test accuracy differences from {first} (points; 95% t intervals: Welch's, and "
                         "paired over the replicates with the same init seed)"),
                  columns=["experiment", "family", "k", "weights remaining", "difference [95%]",
                           "paired difference [95%]", "n (first, this, paired)"], rows=[])
    for r in diffs.to_pylist():
        kt.rows.append([r["experiment"], r["family"], str(r["rewind_iter"]), f"{100 * r['density']:.3g}%",
                        iv(r["delta_acc"], r["delta_acc_ci_low"], r["delta_acc_ci_high"]),
                        iv(r["delta_acc_paired"], r["delta_acc_paired_ci_low"], r["delta_acc_paired_ci_high"]),
                        f"{r['n_first']}, {r['n_this']}, {r['n_paired']}"])
    return kt


def side_by_side_key_table(side: pa.Table, experiments: list[str]) -> KeyTable:
    """The side-by-side table as the console and the report show it: barrier (pp) and test
    accuracy (%) per experiment, and the difference from the first."""
    first = experiments[0]
    columns = ["weights remaining", "k"]
    for what, unit in (("barrier", "pp"), ("acc", "%")):
        columns += [f"{'barrier' if what == 'barrier' else 'accuracy'} {n} ({unit})" for n in experiments]
        columns += [f"Δ {n} − {first} ({'pp' if what == 'barrier' else 'points'})" for n in experiments[1:]]
    kt = KeyTable(title=("Side by side: test error barrier (mean over pairs) and test accuracy (mean over "
                         f"replicates) per cell, and the difference from {first}"), columns=columns, rows=[])
    for r in side.to_pylist():
        row = [f"{100 * r['density']:.3g}%" if r["density"] else f"level {r['level']}", str(r["rewind_iter"])]
        for what in ("barrier", "acc"):
            row += ["—" if r[f"{what}_{n}"] is None else f"{100 * r[f'{what}_{n}']:.2f}" for n in experiments]
            row += ["—" if r[f"{what}_diff_{n}_minus_{first}"] is None
                    else f"{100 * r[f'{what}_diff_{n}_minus_{first}']:+.2f}" for n in experiments[1:]]
        kt.rows.append(row)
    return kt


def legend_labels(experiments: list[str], differences) -> dict[str, str]:
    """`demo (lr 0.05)`: each experiment's name with the values of the (at most two) config
    fields in which the experiments differ, by the field's last word."""
    if not differences:
        return {n: n for n in experiments}
    shown = differences[:2]
    return {n: f"{n} ({', '.join(f'{field.rsplit(chr(46), 1)[-1]} {values[i]}' for field, values in shown)})"
            for i, n in enumerate(experiments)}


# ---- how the configs differ -------------------------------------------------------------------


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def config_differences(store: Store, experiments: list[str]) -> list[tuple[str, list[str]]] | None:
    """(dotted field, its value in each experiment) for every field of the stored, resolved
    configs (STORE/experiments/NAME/spec.yaml) that is not the same in all of them, name aside;
    None when a config cannot be read."""
    import yaml

    flat = []
    for name in experiments:
        try:
            flat.append(_flatten(yaml.safe_load(store.read_text(store.path("experiments", name, "spec.yaml"))) or {}))
        except Exception:  # noqa: BLE001 - an old or unreadable spec: the comparison goes on without it
            return None
    keys = sorted(set().union(*flat) - {"name"})
    if all(_finetune_lr_is_derived(f) for f in flat):  # follows train.optimizer.lr: not a difference of its own
        keys = [k for k in keys if k != "pruning.finetune_lr"]
    missing = "(absent)"
    return [(k, [str(f.get(k, missing)) for f in flat]) for k in keys if len({str(f.get(k, missing)) for f in flat}) > 1]


def _finetune_lr_is_derived(flat: dict[str, Any]) -> bool:
    """Whether a stored config's pruning.finetune_lr is the rate its schedule ends at (the
    default `lth` resolves it to: spec.final_lr), so that it only echoes other fields."""
    try:
        from orchestrator.spec import ScheduleSpec
        from trainers.schedule import lr_at

        sched = {k.split(".", 2)[2]: v for k, v in flat.items() if k.startswith("train.schedule.")}
        sched = {k: v for k, v in sched.items() if v is not None}
        t = int(flat["train.iterations"])
        rate = lr_at(ScheduleSpec.model_validate(sched).to_config(), flat["train.optimizer.lr"], t, t - 1)
        return flat.get("pruning.finetune_lr") is None or float(f"{rate:.12g}") == flat["pruning.finetune_lr"]
    except Exception:  # noqa: BLE001 - an older or partial config: list the field, as before
        return False


def _print_differences(console, experiments: list[str], differences) -> None:
    if differences is None:
        console.print("How the configs differ: a stored config could not be read")
    elif not differences:
        console.print("The configs are the same but for the name.")
    else:
        from rich.table import Table

        table = Table(title="How the configs differ", title_justify="left")
        for col in ("field", *experiments):
            table.add_column(col)
        for key, values in differences:
            table.add_row(key, *values)
        console.print(table)


def _differences_html(experiments: list[str], differences) -> str:
    if differences is None:
        return "<p>How the configs differ: a stored config could not be read.</p>"
    if not differences:
        return "<p>The configs are the same but for the name.</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("field", *experiments))
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in (k, *v)) + "</tr>" for k, v in differences)
    return f"<h2>How the configs differ</h2><table><tr>{head}</tr>{rows}</table>"
