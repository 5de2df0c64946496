"""The report a researcher puts in a paper: units, the summary first, words instead of file
names, the figures' axes, learning curves, figure formats, the comparison of experiments,
and figures redrawn only when what they show changed."""
from __future__ import annotations

import io
import json
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from orchestrator.analysis import analyze, curves
from orchestrator.analysis import figures as figs
from orchestrator.analysis.present import present
from orchestrator.cli import main
from orchestrator.schemas import file_schema
from test_analysis import EXP, build_sweep, write_store


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def with_plan(root: Path, rows: dict, levels: int, experiment: str = EXP) -> None:
    """A jobs.json as `lth run` writes it, whose lineages have `levels` pruning levels."""
    plan = {r["job_id"]: {"kind": "train", "role": r["role"], "level": r["level"], "parents": []}
            for r in rows["runs"]}
    plan.update({r["pair_id"]: {"kind": "interpolate", "parents": [r["job_a"], r["job_b"]]}
                 for r in rows["instability"]})  # analyze reads only the plan's jobs
    plan["extra-level"] = {"kind": "train", "role": "level", "level": levels, "parents": []}
    d = root / "experiments" / experiment
    d.mkdir(parents=True, exist_ok=True)
    (d / "jobs.json").write_text(json.dumps(plan))
    (d / "spec.yaml").write_text(f"name: {experiment}\nmodel: mlp_300_100\n")
    (d / "heartbeat.json").write_text('{"pid": 1}')


def test_present_converts_units_and_removes_float_noise():
    t = pa.table({"mode": ["rewind"], "alpha": [0.1 * 3], "density": [0.8 ** 3],
                  "barrier_mean": [0.004861], "frac_stable": [2 / 3], "acc_mean": [0.9],
                  "n_pairs": [3], "rewind_n": [2], "rewind_mean": [0.5]})
    assert t["alpha"][0].as_py() == 0.30000000000000004  # the noise the CSV used to show
    p = present(t)
    assert p.column_names == ["mode", "alpha", "density_pct", "barrier_mean_pp", "stable_pairs_pct",
                              "acc_mean_pct", "n_pairs", "rewind_n", "rewind_mean_pct"]
    row = p.to_pylist()[0]
    assert row["alpha"] == 0.3 and row["density_pct"] == 51.2 and row["barrier_mean_pp"] == 0.4861
    assert row["stable_pairs_pct"] == 66.666667 and row["acc_mean_pct"] == 90.0
    buf = io.BytesIO()
    pacsv.write_csv(p, buf)
    text = buf.getvalue().decode()
    assert "0.3," in text and "0.30000000000000004" not in text and "0.4861" in text


def test_report_summary_first_words_and_no_machinery(tmp_path):
    rows, _ = build_sweep()
    write_store(tmp_path, rows)
    with_plan(tmp_path, rows, levels=4)  # the plan has a level the store has not measured
    console = quiet()
    assert analyze(str(tmp_path), EXP, console=console) == 0
    out = tmp_path / "reports" / EXP
    html = (out / "report.html").read_text()
    # The summary table (as the CLI prints it) precedes the figures.
    assert html.index("id='summary'") < html.index("onset of stability") < html.index("id='figures'")
    assert "Error barrier on the test set in percentage points" in html
    # Section titles in words; the file names only as a small note.
    assert "<h3 id='fig-instability_vs_rewind'>Instability against the rewinding point" in html
    # Definitions for a reader, not the module's docstring; configuration without machinery.
    assert "Error barrier</dt>" in html and "module docstring" not in html and "add_mode" not in html
    assert "spec.yaml" in html and "heartbeat.json" not in html and "jobs.json" not in html
    # Fractions never reach a table: 0.8^2 remaining is 64.00 (%), not 0.64.
    assert "<td>64.00</td>" in html and "<th>density (%)</th>" in html
    # A long table (the mean path: one row per alpha) is folded; a short one is not; counts read well.
    path_rows = pq.read_table(out / "interpolation_path.parquet").num_rows
    assert path_rows > 30 and f"<details><summary>Show the {path_rows} rows</summary>" in html
    assert "dense.csv; 1 row)" in html and "<details><summary>Show the 1 row" not in html
    # Winning ticket: a level of the plan is unmeasured, so "none yet" and n/4.
    text = console.file.getvalue()
    assert "none yet" in text and "3/4" in text and "/3" not in text
    assert pq.read_table(out / "winning_tickets.parquet")["levels_total"].to_pylist() == [4] * 9


def test_complete_sweep_says_none(tmp_path):
    rows, _ = build_sweep()
    write_store(tmp_path, rows)
    with_plan(tmp_path, rows, levels=3)  # every planned level measured
    console = quiet()
    assert analyze(str(tmp_path), EXP, console=console) == 0
    text = console.file.getvalue()
    lines = [line for line in text.splitlines() if "random_prune" in line]
    assert lines and all(" none " in line and "none yet" not in line and "3/3" in line for line in lines)


def test_rewinding_axis_ticks_at_measured_k_and_no_empty_margin():
    import matplotlib.pyplot as plt

    ks = [0, 100, 250, 500, 1000, 2000]
    fig, ax = plt.subplots()
    ax.plot(ks, np.arange(6), marker="o")
    figs.rewind_axis(ax, ks)
    assert list(ax.get_xticks()) == ks
    lo, hi = ax.get_xlim()
    assert lo < 0 and hi > 2000  # no point on the frame
    tr = ax.xaxis.get_transform()
    a, b, c, d = tr.transform([lo, 0, 2000, hi])
    # The margin left of k = 0 is the same small share of the axis as right of the last k.
    assert (b - a) / (d - a) == pytest.approx(0.06 / 1.12, rel=1e-6)
    assert (d - c) / (d - a) == pytest.approx(0.06 / 1.12, rel=1e-6)
    plt.close(fig)


def test_flat_panel_gets_a_readable_range():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0.0, 0.0])
    figs.sensible_ylim(ax, [np.zeros(5)], floor=0.0)
    lo, hi = ax.get_ylim()
    assert hi - lo >= 0.5 and -0.1 < lo < 0 < hi  # not ±0.04, and 0 is off the frame
    plt.close(fig)


def test_interpolation_figure_shows_every_measured_k():
    from test_analysis import computed

    rows, _ = build_sweep()
    res = computed(rows)
    fig = figs.interpolation_paths(res.interpolation_path)
    labels = {t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()}
    assert labels == {"k = 0", "k = 10", "k = 50"}
    # Every panel draws every k.
    assert all(len(ax.lines) == 3 for ax in fig.axes)
    figs.close(fig)


def test_learning_curves_equal_an_independent_mean(tmp_path):
    rows, _ = build_sweep()
    # Metrics rows for every level run: accuracy rises with the iteration.
    metrics = []
    for r in rows["runs"]:
        for it in (r["start_iter"], 50, 100):
            for split in ("test", "train"):
                acc = 0.5 + 0.004 * it + 0.01 * r["replicate"] + (0.001 if split == "train" else 0)
                metrics.append(dict(experiment=EXP, job_id=r["job_id"], iteration=it, split=split,
                                    loss=1.0, accuracy=acc))
    rows["metrics"] = [{k: v for k, v in m.items() if k != "experiment"} for m in metrics]
    write_store(tmp_path, rows)
    assert analyze(str(tmp_path), EXP, console=quiet()) == 0
    from orchestrator.analysis import tables as T
    from orchestrator.analysis.read import Store
    from test_analysis import arrow

    runs_m = T.add_mode(arrow(rows["runs"], "runs"))
    chosen = curves.chosen_runs(runs_m)
    got = curves.curves(chosen, curves.read_metrics(Store.open(str(tmp_path)), EXP,
                                                    chosen["job_id"].to_pylist()))
    # Independently: dense runs and rewind runs at every k (issue 21, item 10: it was the
    # largest k only), per (k, level, split, iteration).
    runs = {r["job_id"]: r for r in rows["runs"] if r["role"] == "level"
            and (r["level"] == 0 or (r["retrain"] == "rewind" and r["prune_strategy"] != "random"))}
    cells = defaultdict(list)
    for m in rows["metrics"]:
        if m["job_id"] in runs:
            run = runs[m["job_id"]]
            cells[(run["rewind_iter"], run["level"], m["split"], m["iteration"])].append(m["accuracy"])
    assert got.num_rows == len(cells) and {k for k, *_ in cells} == {0, 10, 50}
    for r in got.to_pylist():
        vals = cells[(r["rewind_iter"], r["level"], r["split"], r["iteration"])]
        assert r["n_replicates"] == len(vals)
        assert abs(r["acc_mean"] - statistics.mean(vals)) <= 1e-12
        assert abs(r["acc_std"] - statistics.stdev(vals)) <= 1e-12
    assert (tmp_path / "reports" / EXP / "learning_curves.png").exists()


def test_formats_and_figures_drawn_only_when_changed(tmp_path):
    rows, _ = build_sweep()
    write_store(tmp_path, rows)
    assert main(["analyze", EXP, "--store", str(tmp_path), "--format", "png,pdf,svg"]) == 0
    out = tmp_path / "reports" / EXP
    for name in ("instability_vs_rewind", "interpolation_path", "accuracy_vs_density"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
        assert b"<svg" in (out / f"{name}.svg").read_bytes()[:2000]
    first = json.loads((out / "summary.json").read_text())
    assert set(first["figures_drawn"]) >= {"instability_vs_rewind", "accuracy_vs_density"}
    before = (out / "accuracy_vs_density.pdf").stat().st_mtime_ns
    assert main(["analyze", EXP, "--store", str(tmp_path), "--format", "png,pdf,svg"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["figures_drawn"] == [] and set(again["figures_unchanged"]) == set(first["figures_drawn"])
    assert (out / "accuracy_vs_density.pdf").stat().st_mtime_ns == before
    # New results: the figures that show them are drawn again.
    more = [dict(r, job_id=r["job_id"] + "-x", test_accuracy=0.1) for r in rows["runs"] if r["level"] == 3]
    d = tmp_path / "results" / "runs" / f"experiment={EXP}"
    pq.write_table(pa.Table.from_pylist(more, schema=file_schema("runs")), d / "part-new.parquet")
    assert main(["analyze", EXP, "--store", str(tmp_path)]) == 0
    third = json.loads((out / "summary.json").read_text())
    assert "accuracy_vs_density" in third["figures_drawn"]
    assert main(["analyze", EXP, "--store", str(tmp_path), "--format", "png,tiff"]) == 2


def test_compare_two_experiments_on_the_same_axes(tmp_path, capsys):
    for seed, name in ((0, "fp32"), (1, "bf16")):
        rows, _ = build_sweep(seed=seed, experiment=name)
        write_store(tmp_path, rows, experiment=name)
    assert main(["analyze", "fp32", "bf16", "--store", str(tmp_path), "--format", "png,svg"]) == 0
    out = tmp_path / "reports" / "compare" / "fp32-vs-bf16"
    html = (out / "report.html").read_text()
    assert "Comparison: fp32, bf16" in html and html.count("Error barrier on the test set") == 2
    for name in ("compare_instability", "compare_accuracy"):
        assert (out / f"{name}.png").exists() and (out / f"{name}.svg").exists()
    svg = (out / "compare_instability.svg").read_text()
    assert "fp32" in svg and "bf16" in svg  # one line per experiment, named in the legend
    assert main(["analyze", "fp32", "nope", "--store", str(tmp_path)]) == 2
    assert main(["analyze", "fp32", "fp32", "--store", str(tmp_path)]) == 2


def test_compare_says_how_the_configs_differ(tmp_path, capsys):
    for seed, name in ((0, "fp32"), (1, "bf16")):
        rows, _ = build_sweep(seed=seed, experiment=name)
        write_store(tmp_path, rows, experiment=name)
        d = tmp_path / "experiments" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "spec.yaml").write_text(f"name: {name}\nmodel: mlp_300_100\ntrain: {{precision: {name}, batch_size: 64}}\n")
    assert main(["analyze", "fp32", "bf16", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "How the configs differ" in out and "train.precision" in out and "batch_size" not in out
    html = (tmp_path / "reports" / "compare" / "fp32-vs-bf16" / "report.html").read_text()
    assert "<tr><td>train.precision</td><td>fp32</td><td>bf16</td></tr>" in html
    assert "train.batch_size" not in html and "<td>name</td>" not in html
    (tmp_path / "experiments" / "bf16" / "spec.yaml").write_text("name: bf16\nmodel: mlp_300_100\ntrain: {precision: fp32, batch_size: 64}\n")
    assert main(["analyze", "fp32", "bf16", "--store", str(tmp_path)]) == 0
    assert "The configs are the same but for the name." in capsys.readouterr().out


def test_every_float_a_reader_sees_has_a_unit():
    """Every fraction of every written table (the noise floor's included) is in percent or
    percentage points; only the interpolation coefficient alpha and Pearson correlations
    (weight_correlation_*, in [-1, 1], not fractions) have no unit. The converted values equal
    100 x the computed fractions."""
    from orchestrator.analysis import compute
    from orchestrator.analysis import tables as T
    from orchestrator.analysis.read import INSTABILITY_COLUMNS, INTERPOLATION_COLUMNS, RUNS_COLUMNS

    rows, _ = build_sweep()
    res = compute(*(pa.Table.from_pylist(rows[t], schema=file_schema(t)).select(c) for t, c in
                    (("runs", RUNS_COLUMNS), ("instability", INSTABILITY_COLUMNS),
                     ("interpolation", INTERPOLATION_COLUMNS))), 0.02)
    # A noise-floor table as tables.noise_floor makes it (two pairs, one data-order pair).
    pairs = pa.table({"rewind_iter": [0, 0, 0], "level": [1, 1, 1], "split": ["test"] * 3,
                      "barrier": [0.001, 0.003, 0.05], "pair_id": ["n1", "n2", "d1"]})
    res.noise_floor = T.noise_floor(pairs.slice(2), pairs.slice(0, 2))
    seen = set()
    for stem, _title, t in res.tables():
        p = present(t)
        for name in p.column_names:
            if pa.types.is_floating(p.schema.field(name).type) and name != "alpha" \
                    and not name.startswith("weight_correlation_"):
                assert name.endswith(("_pct", "_pp")), (stem, name)
                seen.add(name)
    assert {"end_error_mean_pct", "noise_barrier_mean_pp", "noise_barrier_max_pp",
            "data_order_barrier_mean_pp"} <= seen
    noise = present(res.noise_floor).to_pylist()[0]
    assert abs(noise["noise_barrier_max_pp"] - 0.3) <= 1e-6  # rounded to 6 decimals
    assert abs(noise["data_order_barrier_mean_pp"] - 5.0) <= 1e-6
    inst = present(res.instability).to_pylist()
    raw = res.instability.to_pylist()
    for a, b in zip(inst, raw):
        if b["end_error_mean"] is not None:
            assert abs(a["end_error_mean_pct"] - 100 * b["end_error_mean"]) <= 0.5e-6 + 1e-12
