"""Figures a reviewer accepts (issue 29): no text runs into other text, no text leaves the
figure (a clipped title), every line of a panel has its own colour and legend entry, density
ticks thin out as levels grow. Checked on every figure `lth analyze` draws for a constructed
demo-like store (with published references), for `lth analyze A B`, for the structured
report's figures, and for a 12-level sweep."""
from __future__ import annotations

import itertools
import random

import matplotlib.text as mtext
import pyarrow as pa
import pytest
import yaml

from orchestrator.analysis import compute
from orchestrator.analysis import figures as F
from orchestrator.cli import main
from test_analysis import EXP, arrow, build_sweep, write_store


def _texts(fig):
    """(text, screen box) of every drawn text: tick labels only inside the axis view (matplotlib
    draws no others), texts of hidden axes left out."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    hidden = set()
    for ax in fig.axes:
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = sorted((lo, hi))
            for t in axis.get_major_ticks() + axis.get_minor_ticks():
                # a tick a hair outside the view (float rounding) is drawn: 1e-9 of the range
                if not (lo - 1e-9 * (hi - lo) <= t.get_loc() <= hi + 1e-9 * (hi - lo)):
                    hidden |= {id(t.label1), id(t.label2)}
    out = []
    for t in fig.findobj(mtext.Text):
        if id(t) in hidden or not t.get_visible() or not t.get_text().strip():
            continue
        if t.axes is not None and not t.axes.get_visible():
            continue
        out.append((t.get_text(), t.get_window_extent(r)))
    return out


def layout_problems(fig) -> list[str]:
    F.finish_layout(fig)  # what encode() does before writing
    ts = _texts(fig)
    out = []
    for (a, ba), (b, bb) in itertools.combinations(ts, 2):
        inter = ba.intersection(ba, bb)
        # touching boxes (a shared pixel edge from rounding) are not an overlap: more than 1 px
        if inter is not None and inter.width > 1 and inter.height > 1:
            out.append(f"{a!r} overlaps {b!r}")
    w, h = fig.bbox.width, fig.bbox.height
    out += [f"{a!r} leaves the figure" for a, b in ts if b.x0 < -1 or b.y0 < -1 or b.x1 > w + 1 or b.y1 > h + 1]
    return out


@pytest.fixture
def drawn(monkeypatch):
    """Every figure `lth analyze` encodes, checked before it is written."""
    seen: dict[str, list[str]] = {}
    real = F.encode

    def check(fig, fmt="png"):
        title = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) else f"figure {len(seen)}"
        seen.setdefault(title, layout_problems(fig))
        widths.append(round(float(fig.get_size_inches()[0]), 6))
        return real(fig, fmt)

    widths: list[float] = []
    monkeypatch.setattr(F, "encode", check)
    return seen, widths


def _with_correlation(rows, seed=0):
    rng = random.Random(seed)
    for r in rows["runs"]:
        r["weight_correlation"] = None if r["level"] == 0 else 0.3 + 0.1 * rng.random()
    return rows


@pytest.mark.parametrize("figsize", [None, "page", "column"])
def test_every_figure_of_the_report_and_the_comparison_has_no_overlapping_text(tmp_path, drawn, figsize):
    size = [] if figsize is None else ["--figsize", figsize]
    drawn, widths = drawn
    rows, _ = build_sweep()
    write_store(tmp_path, _with_correlation(rows))
    d = tmp_path / "experiments" / EXP
    d.mkdir(parents=True)
    (d / "spec.yaml").write_text(yaml.safe_dump({"model": "mlp_300_100", "data": {"name": "digits"}}))
    ref = {"paper": "Toy 2020", "citation": "c", "rows": [
        dict(where="T", setting="s", model="mlp_300_100", dataset="digits", family=f, density=dd,
             metric="test_accuracy", value=v, spread=0.3, n=3, source="R: x")
        for f, dd, v in (("imp_rewind", 0.8, 90.5), ("dense", 1.0, 90.0), ("imp_finetune", 0.512, 85.0))]}
    (tmp_path / "ref.yaml").write_text(yaml.safe_dump(ref))
    assert main(["analyze", EXP, "--store", str(tmp_path), "--references", str(tmp_path / "ref.yaml"), *size]) == 0
    if figsize is not None:  # the paper sizes re-lay out the same figures: the report's suffice (CI time)
        assert len(drawn) >= 5 and {t: p for t, p in drawn.items() if p} == {}
        assert set(widths) == {F.PAPER_WIDTHS[figsize]}, widths
        return
    cmp_root = tmp_path / "cmp"
    for seed, (name, lr) in enumerate((("demo", 0.1), ("demo_lr05", 0.05))):
        write_store(cmp_root, _with_correlation(build_sweep(seed=seed, experiment=name)[0], seed), experiment=name)
        d = cmp_root / "experiments" / name
        d.mkdir(parents=True)
        (d / "spec.yaml").write_text(f"name: {name}\nmodel: mlp_300_100\ntrain: {{optimizer: {{lr: {lr}}}}}\n")
    assert main(["analyze", "demo", "demo_lr05", "--store", str(cmp_root), *size]) == 0
    # the report's instability, path, accuracy, method and weight-correlation figures, and the
    # comparison's instability, accuracy and weight correlation
    assert len(drawn) >= 8, sorted(drawn)
    assert {t: p for t, p in drawn.items() if p} == {}


def _twelve_levels():
    """A 12-level sweep of rewind and random_reinit plus two pruning-at-init methods, 3 replicates
    (the issue's Fashion-MNIST case: 'rewind' and 'random_reinit' drew in one colour)."""
    rng = random.Random(1)
    runs = []
    base = dict(parent_job_id=None, data_seed=0, start_iter=0, end_iter=100, test_loss=1.0, train_loss=1.0,
                train_accuracy=0.9, wall_seconds=1.0, attempts=1, host="h", node="n", device="cpu",
                weights_path="w", mask_path="m")
    for rep in range(3):
        runs.append(dict(base, job_id=f"d{rep}", role="level", replicate=rep, rewind_iter=0, level=0,
                         retrain="rewind", prune_strategy="magnitude_global", density=1.0,
                         test_accuracy=0.9 + rng.gauss(0, 0.003), weight_correlation=None))
        for lv in range(1, 13):
            for role, retrain, strat, drop in (("level", "rewind", "magnitude_global", 0.002),
                                               ("level", "reinit", "magnitude_global", 0.01),
                                               ("pai", "rewind", "snip", 0.006),
                                               ("pai", "rewind", "synflow", 0.004)):
                runs.append(dict(base, job_id=f"{role}{retrain}{strat}{rep}-{lv}", role=role, replicate=rep,
                                 rewind_iter=0, level=lv, retrain=retrain, prune_strategy=strat,
                                 density=0.8 ** lv, test_accuracy=0.9 - drop * lv + rng.gauss(0, 0.003),
                                 weight_correlation=0.2 + 0.02 * lv))
    return compute(arrow(runs, "runs"), arrow([], "instability"), arrow([], "interpolation"), 0.02,
                   num_classes=10)


def test_a_twelve_level_sweep_thins_its_density_ticks_and_colours_each_line():
    res = _twelve_levels()
    fig = F.accuracy_vs_density(res.accuracy, res.dense, [0])
    assert layout_problems(fig) == []
    for ax in fig.axes:
        if not ax.get_visible() or not ax.get_xticks().size:
            continue
        lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_") and len(ln.get_xdata()) > 1]
        colours = [ln.get_color() for ln in lines]
        assert len(set(map(str, colours))) == len(colours), [ln.get_label() for ln in lines]
    retrain_panel = next(ax for ax in fig.axes if ax.get_title().startswith("retrain modes"))
    labels = {t.get_text().split(" (")[0] for t in retrain_panel.get_legend().get_texts()}
    assert {"rewind", "random_reinit"} <= labels
    F.close(fig)
    for make in (lambda: F.method_comparison(res.methods, 10), lambda: F.weight_correlation(res.methods)):
        fig = make()
        assert fig is not None and layout_problems(fig) == []
        F.close(fig)


def test_one_colour_per_family_whatever_else_the_experiment_holds():
    a = F._family_style(["imp_rewind", "snip", "snip+shuffle"])
    b = F._family_style(["imp_finetune", "imp_rewind", "random_reinit", "snip", "synflow"])
    assert a["imp_rewind"]["color"] == b["imp_rewind"]["color"] == F.mode_color("rewind")
    assert a["snip"]["color"] == b["snip"]["color"] == a["snip+shuffle"]["color"]
    assert F.mode_color("random_reinit") != F.mode_color("rewind")


def test_structured_report_figures_have_no_overlapping_text():
    dist = pa.table({"fraction": [0.3] * 4 + [0.5] * 4, "epoch": [0, 1, 2, 3] * 2,
                     **{f"vs_epoch_{e}": [abs(e - i) / 4 for i in range(4)] * 2 for e in range(4)}})
    prof = pa.table({"family": ["imp_rewind"] * 6 + ["random_prune"] * 6, "rewind_iter": [0] * 12,
                     "level": [2] * 12, "layer_index": list(range(6)) * 2,
                     "layer": [f"block{i}.conv.weight" for i in range(6)] * 2, "total": [1000] * 12,
                     "density": [0.9, 0.7, 0.5, 0.4, 0.3, 0.2] * 2, "weight_correlation_mean": [0.3] * 12,
                     "n_replicates": [2] * 12})
    for fig in (F.early_bird_distances(dist), F.layer_profiles(prof, None)):
        assert fig is not None and layout_problems(fig) == []
        F.close(fig)


def test_a_demo_like_report_with_one_mode_and_a_flat_train_split_lays_out(tmp_path, drawn):
    """The demo's own report: only `rewind` (one accuracy panel, its legend beside the title's
    band), a train split whose barriers are all 0 (one instability panel, narrower than its
    title, with the omitted-panel note under the axis label)."""
    seen, _ = drawn
    rows, _ = build_sweep()
    keep = lambda jid: not any(f"-{m}-" in jid for m in ("finetune", "random_prune"))  # noqa: E731
    rows["runs"] = [r for r in rows["runs"] if keep(r["job_id"])]
    for table in ("interpolation", "instability"):
        rows[table] = [r for r in rows[table] if keep(r["job_a"])]
    for r in rows["interpolation"]:
        if r["split"] == "train":
            r.update(error=0.0, loss=0.0)
    for r in rows["instability"]:
        if r["split"] == "train":
            r.update(error_a=0.0, error_b=0.0, max_error=0.0, barrier=0.0)
    write_store(tmp_path, rows)
    assert main(["analyze", EXP, "--store", str(tmp_path)]) == 0
    assert any(t.startswith("Instability") for t in seen) and any(t.startswith("Test accuracy") for t in seen)
    assert {t: p for t, p in seen.items() if p} == {}


def test_layer_profiles_over_more_than_a_decade_keep_their_density_labels_apart():
    # the demo's level 3: 3% to 80% of a layer's weights kept
    prof = pa.table({"family": ["imp_rewind"] * 3 + ["synflow"] * 3, "rewind_iter": [0] * 6,
                     "level": [3] * 6, "layer_index": list(range(3)) * 2,
                     "layer": ["hidden.0.weight", "hidden.2.weight", "fc.weight"] * 2, "total": [1000] * 6,
                     "density": [0.26, 0.031, 0.33, 0.14, 0.095, 0.8], "weight_correlation_mean": [0.3] * 6,
                     "n_replicates": [2] * 6})
    fig = F.layer_profiles(prof, None)
    assert fig is not None and layout_problems(fig) == []
    F.close(fig)
