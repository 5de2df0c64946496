"""A report ready for a paper (issue 21, items 9-11): the comparison's summary first with a
side-by-side table, tables beside the figures, legends that say what differs, optional titles,
n in every figure, one colour per meaning, no all-zero panels, learning curves at every k, the
100% point on the density axis, editable SVG text, the winning ticket's caveat, and Markdown and
LaTeX exports."""
from __future__ import annotations

import io
import statistics
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from orchestrator.analysis import analyze
from orchestrator.analysis import figures as figs
from orchestrator.analysis import tables as T
from orchestrator.analysis.present import key_tables
from orchestrator.cli import main
from test_analysis import EXP, _acc_runs, build_sweep, computed, expected_barriers, write_store


def quiet() -> Console:
    return Console(file=io.StringIO(), width=250)


def _two_experiments(tmp_path):
    rows = {}
    for seed, (name, lr) in enumerate((("demo", 0.1), ("demo_lr05", 0.05))):
        rows[name], pair_mode = build_sweep(seed=seed, experiment=name)
        write_store(tmp_path, rows[name], experiment=name)
        d = tmp_path / "experiments" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "spec.yaml").write_text(f"name: {name}\nmodel: mlp_300_100\ntrain: {{optimizer: {{lr: {lr}}}}}\n")
    return rows


def _rewind_cells(rows):
    """Independently: the rewind lineage's mean test barrier and mean test accuracy per
    (level, k), in fractions, from the raw rows."""
    barriers = expected_barriers(rows["interpolation"])
    meta = {r["pair_id"]: r for r in rows["interpolation"]}
    bar, acc = defaultdict(list), defaultdict(list)
    for (pid, split), b in barriers.items():
        r = meta[pid]
        if split == "test" and "-rewind-" in pid:
            bar[(r["level"], r["rewind_iter"])].append(b)
    for r in rows["runs"]:
        if r["role"] == "level" and r["level"] > 0 and r["retrain"] == "rewind" and r["prune_strategy"] != "random":
            acc[(r["level"], r["rewind_iter"])].append(r["test_accuracy"])
    return ({k: statistics.mean(v) for k, v in bar.items()}, {k: statistics.mean(v) for k, v in acc.items()})


def test_compare_summary_first_side_by_side_table_files_and_legends(tmp_path, capsys):
    rows = _two_experiments(tmp_path)
    assert main(["analyze", "demo", "demo_lr05", "--store", str(tmp_path), "--format", "png,svg"]) == 0
    text = capsys.readouterr().out
    # summary first: the side-by-side table before each experiment's own summary
    assert text.index("Side by side") < text.index("demo: ") and text.index("How the configs differ") < text.index("Side by side")
    assert "No instability measurements yet" not in text
    out = tmp_path / "reports" / "compare" / "demo-vs-demo_lr05"
    side = pq.read_table(out / "side_by_side.parquet")
    assert (out / "side_by_side.csv").exists() and (out / "summary.md").exists() and (out / "summary.tex").exists()
    (bar_a, acc_a), (bar_b, acc_b) = _rewind_cells(rows["demo"]), _rewind_cells(rows["demo_lr05"])
    checked = 0
    for r in side.to_pylist():
        cell = (r["level"], r["rewind_iter"])
        if cell in bar_a:
            assert r["barrier_demo_pp"] == pytest.approx(100 * bar_a[cell], abs=1e-6)  # rounded to 6 decimals
            assert r["barrier_demo_lr05_pp"] == pytest.approx(100 * bar_b[cell], abs=1e-6)
            assert r["barrier_diff_demo_lr05_minus_demo_pp"] == pytest.approx(100 * (bar_b[cell] - bar_a[cell]), abs=2e-6)
            checked += 1
        if cell in acc_a:
            assert r["acc_demo_pct"] == pytest.approx(100 * acc_a[cell], abs=1e-6)
            assert r["acc_diff_demo_lr05_minus_demo_pp"] == pytest.approx(100 * (acc_b[cell] - acc_a[cell]), abs=2e-6)
            checked += 1
    assert checked == len(bar_a) + len(acc_a) > 0
    dense = [r for r in side.to_pylist() if r["level"] == 0]  # the dense accuracy beside its barrier
    dense_a = statistics.mean(r["test_accuracy"] for r in rows["demo"]["runs"] if r["level"] == 0 and r["role"] == "level")
    assert dense and all(r["acc_demo_pct"] == pytest.approx(100 * dense_a, abs=1e-6) for r in dense)
    tex = (out / "summary.tex").read_text()
    assert "$\\Delta$ demo\\_lr05 $-$ demo (pp)" in tex and "Δ" not in tex
    html = (out / "report.html").read_text()
    assert html.index("Side by side") < html.index("<h2>Summaries</h2>") < html.index("<h2>Figures</h2>")
    # legends say what differs
    svg = (out / "compare_instability.svg").read_text()
    assert "demo (lr 0.1" in svg and "demo_lr05 (lr 0.05" in svg


def test_no_titles_n_in_the_figure_and_editable_svg_text(tmp_path):
    rows, _ = build_sweep()
    write_store(tmp_path, rows)
    assert analyze(str(tmp_path), EXP, console=quiet(), formats=("png", "svg")) == 0
    out = tmp_path / "reports" / EXP
    svg = (out / "instability_vs_rewind.svg").read_text()
    assert "<text" in svg and "DejaVuSans-" not in svg  # text, not glyph outlines
    assert "Instability against the rewinding point (rewind" in svg  # the title, by default
    # per cell: 3 replicates (the interval's n) x C(3 seeds, 2) = 9 pairs (the mean's)
    assert "n = 3 replicates, 9 pairs" in svg
    assert "n = 3 replicates" in (out / "accuracy_vs_density.svg").read_text()
    assert main(["analyze", EXP, "--store", str(tmp_path), "--format", "png,svg", "--no-titles"]) == 0
    svg = (out / "instability_vs_rewind.svg").read_text()
    assert "Instability against the rewinding point (rewind" not in svg and "n = 3 replicates, 9 pairs" in svg
    assert "test set" in svg  # panel headings stay


def test_density_axis_shows_the_dense_100_percent_point():
    res = computed(build_sweep()[0])
    fig = figs.accuracy_vs_density(res.accuracy, res.dense)
    ax = fig.axes[0]
    assert 1.0 in list(ax.get_xticks())
    lo, hi = sorted(ax.get_xlim())
    assert lo < 0.8 ** 3 and hi > 1.0  # every measured density and 100% inside the view
    figs.close(fig)


def _line_colors(fig) -> dict[str, tuple]:
    from matplotlib.colors import to_rgba

    return {ln.get_label().split(" (")[0]: to_rgba(ln.get_color()) for ax in fig.axes for ln in ax.get_lines()
            if not ln.get_label().startswith("_")}


def test_one_colour_per_meaning_across_figures():
    res = computed(build_sweep()[0])
    res.add_path(pa.Table.from_pylist(build_sweep()[0]["interpolation"]))
    ks = [0, 10, 50]
    inst = _line_colors(figs.instability_vs_rewind(res.instability, 0.02))
    path = _line_colors(figs.interpolation_paths(res.interpolation_path, ks))
    acc = _line_colors(figs.accuracy_vs_density(res.accuracy, res.dense, ks))
    # a rewinding point k: one colour in the path and accuracy figures
    for k in ks:
        assert path[f"k = {k}"] == acc[f"k = {k}"]
    # a pruning level: one colour in the instability figure and the learning curves
    curves = pa.table({"rewind_iter": [0, 0, 10, 10], "level": [0, 0, 2, 2], "density": [1.0, 1.0, 0.64, 0.64],
                       "split": ["test"] * 4, "iteration": [0, 100, 10, 100], "acc_mean": [0.5, 0.9, 0.6, 0.9],
                       "acc_std": [None] * 4, "n_replicates": [3] * 4})
    lc = _line_colors(figs.learning_curves(curves))
    assert lc["64% remaining"] == inst["64% remaining"] and lc["dense"] == (0.0, 0.0, 0.0, 1.0)
    assert len(set(path.values())) == 3  # three k, three colours


def test_a_split_whose_every_barrier_is_zero_gets_a_note_not_a_panel():
    res = computed(build_sweep()[0])
    s = res.instability
    zero = pc.if_else(pc.equal(s["split"], "train"), 0.0, s["barrier_mean"])
    s = s.set_column(s.schema.get_field_index("barrier_mean"), "barrier_mean", zero)
    fig = figs.instability_vs_rewind(s, 0.02)
    assert len([a for a in fig.axes if a.get_visible()]) == 1
    assert any("train set: every barrier is 0.00 points" in t.get_text() for t in fig.texts)
    figs.close(fig)
    fig = figs.instability_vs_rewind(res.instability, 0.02)
    assert len(fig.axes) == 2  # with a non-zero train barrier, both panels
    figs.close(fig)


def test_learning_curves_at_every_k_with_a_zoomed_accuracy_axis():
    rows = []
    for k in (0, 10, 50):
        for it, acc in ((k, 0.1), (75, 0.95), (100, 0.97)):
            rows.append(dict(rewind_iter=k, level=2, density=0.64, split="test", iteration=it, acc_mean=acc,
                             acc_std=None, n_replicates=2))
    for it, acc in ((0, 0.1), (75, 0.96), (100, 0.98)):
        rows.append(dict(rewind_iter=0, level=0, density=1.0, split="test", iteration=it, acc_mean=acc,
                         acc_std=None, n_replicates=2))
    from orchestrator.analysis.curves import SCHEMA

    fig = figs.learning_curves(pa.Table.from_pylist(rows, schema=SCHEMA))
    titles = [a.get_title() for a in fig.axes]
    assert all(any(f"k = {k}" in t for t in titles) for k in (0, 10, 50))
    lo, hi = fig.axes[0].get_ylim()
    assert lo > 90 and hi < 100  # the second half of training (95-98%), not 10-98%
    figs.close(fig)


def test_winning_ticket_says_when_it_is_the_sparsest_level_measured():
    res = computed(build_sweep()[0])
    runs = _acc_runs([0.90, 0.92], {1: [0.91, 0.93], 2: [0.92, 0.92]})  # every level matches
    acc = T.accuracy_summary(runs, T.dense_accuracy(runs))
    res.winning_tickets = T.winning_tickets(acc)
    assert res.winning_tickets["sparsest_measured"].to_pylist() == [True]
    tables, _ = key_tables(res, 0.02, None)
    ticket = next(kt for kt in tables if kt.title.startswith("Winning ticket"))
    assert "sparsest level measured" in ticket.rows[0][2]
    runs = _acc_runs([0.90, 0.92], {1: [0.91, 0.93], 2: [0.80, 0.80]})  # level 2 does not match
    res.winning_tickets = T.winning_tickets(T.accuracy_summary(runs, T.dense_accuracy(runs)))
    assert res.winning_tickets["sparsest_measured"].to_pylist() == [False]
    tables, _ = key_tables(res, 0.02, None)
    ticket = next(kt for kt in tables if kt.title.startswith("Winning ticket"))
    assert "sparsest" not in ticket.rows[0][2]


def test_summary_tables_as_markdown_and_latex(tmp_path):
    rows, _ = build_sweep()
    write_store(tmp_path, rows)
    assert analyze(str(tmp_path), EXP, console=quiet()) == 0
    out = tmp_path / "reports" / EXP
    md = (out / "summary.md").read_text()
    tex = (out / "summary.tex").read_text()
    assert "| weights remaining | k = 0 | k = 10 | k = 50 | onset of stability (k) |" in md
    assert "| --- | ---: |" in md and "Dense test accuracy" in md
    assert "\\begin{tabular}{lrrrr}" in tex and "\\toprule" in tex and "\\bottomrule" in tex
    assert "$\\pm$" in tex and "\\%" in tex and "±" not in tex  # escaped for LaTeX
    # every data row of the barrier table appears in both
    res = computed(rows)
    tables, _ = key_tables(res, 0.02, None)
    for row in tables[0].rows:
        assert "| " + " | ".join(row) + " |" in md
