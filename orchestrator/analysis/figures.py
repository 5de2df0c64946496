"""The figures of the lottery-ticket papers, drawn from the summary tables.

Each drawing function returns a matplotlib Figure (or None when there is nothing to draw);
`encode` turns it into PNG, PDF or SVG bytes. Every value on an axis is in percent or
percentage points. Missing cells are NaN, which matplotlib draws as gaps (never as zeros).
Legends sit outside the axes so they never cover data.
"""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
# SVG text as <text> elements, not glyph outlines: a figure stays editable (labels, fonts) in
# Inkscape or Illustrator when it goes into a paper.
matplotlib.rcParams["svg.fonttype"] = "none"
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator  # noqa: E402

from orchestrator.analysis.figure_plan import pick as _pick  # noqa: E402
from orchestrator.analysis.figure_plan import primary_mode  # noqa: E402


def thin_ticks(fig: Figure, pad_px: float = 4.0) -> None:
    """Drop x tick labels that would run into their neighbour ('13.4%10.7%' on a 12-level
    sweep): after a draw, walk each axis's labels in screen order and keep one only when it
    clears the last one kept by `pad_px`. The ticks kept keep their texts."""
    fig.draw_without_rendering()  # the layout (constrained) and the texts' extents, no pixels
    r = fig.canvas.get_renderer()
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        ticks = [(t.get_loc(), t.label1) for t in ax.xaxis.get_major_ticks()
                 if t.label1.get_visible() and t.label1.get_text()]
        lo, hi = sorted(ax.get_xlim())
        ticks = [(x, lab) for x, lab in ticks if lo <= x <= hi]
        if len(ticks) < 2:
            continue
        boxes = sorted(((lab.get_window_extent(r), x, lab.get_text()) for x, lab in ticks), key=lambda b: b[0].x0)
        kept, last = [], None
        for box, x, text in boxes:
            if last is None or box.x0 >= last.x1 + pad_px:
                kept.append((x, text))
                last = box
        if len(kept) < len(boxes):
            rot = ticks[0][1].get_rotation()
            ax.set_xticks([x for x, _ in kept], [t for _, t in kept], rotation=rot)


# `lth analyze --figsize column|page`: a journal's single column and full page width, inches.
PAPER_WIDTHS = {"column": 3.25, "page": 6.75}
# font sizes (points) at each width: suptitle, panel title, axis label, tick label, legend, other
_PAPER_FONTS = {"column": (8, 7, 7, 6, 6, 6), "page": (9, 8, 8, 7, 7, 7)}


def fit_to_paper(fig: Figure, size: str) -> None:
    """Re-lay `fig` out at a paper's width: its panels in at most one (column) or two (page)
    columns, in reading order, every panel with its own tick labels and axis label; every legend
    merged into one legend under the panels (labels stay distinct: `k = 0 ...`, `rewind ...`);
    fonts at sizes read in print at that width. Constrained layout then fits the text."""
    width = PAPER_WIDTHS[size]
    sup, title, label, tick, legend, other = _PAPER_FONTS[size]
    axes = [a for a in fig.axes if a.get_visible() and a.get_subplotspec() is not None]
    if not axes:
        return
    cols = min(1 if size == "column" else 2, len(axes))
    rows = -(-len(axes) // cols)
    entries: dict[str, object] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if not lab.startswith("_"):
                entries.setdefault(lab, h)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    for leg in list(fig.legends):
        for h, t in zip(leg.legend_handles, leg.get_texts()):
            entries.setdefault(t.get_text(), h)
        leg.remove()
    ylabel = next((a.get_ylabel() for a in axes if a.get_ylabel()), "")
    xlabel = next((a.get_xlabel() for a in axes if a.get_xlabel()), "")
    gs = fig.add_gridspec(rows, cols)
    for i, ax in enumerate(axes):
        ax.set_subplotspec(gs[i // cols, i % cols])
        ax.tick_params(labelleft=True, labelbottom=True, labelsize=tick)
        if i % cols == 0 and not ax.get_ylabel():
            ax.set_ylabel(ylabel)
        if not ax.get_xlabel():
            ax.set_xlabel(xlabel)
        ax.title.set_fontsize(title)
        ax.xaxis.label.set_fontsize(label)
        ax.yaxis.label.set_fontsize(label)
        for t in ax.texts:
            t.set_fontsize(other)
    for t in fig.texts:
        t.set_fontsize(other)
    if getattr(fig, "_suptitle", None) is not None:
        fig._suptitle.set_fontsize(sup)
        fig._suptitle.set_wrap(True)
    panel_h = width / cols * (0.78 if cols == 1 else 0.8)
    fig.set_size_inches(width, rows * panel_h + 0.3 + 0.16 * -(-len(entries) // cols))
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncols=cols, fontsize=legend)
    fig._lth_dpi = 300  # a print resolution for the PNG at a paper's size (PDF and SVG are vectors)


def finish_layout(fig: Figure) -> None:
    """What every figure gets before it is written: a suptitle wrapped at the figure's width (a
    one-panel figure is narrower than its title; constrained layout then makes room for the
    lines instead of cutting both ends off), and thinned tick labels."""
    if getattr(fig, "_suptitle", None) is not None:
        fig._suptitle.set_wrap(True)
    thin_ticks(fig)


def encode(fig: Figure, fmt: str = "png") -> bytes:
    finish_layout(fig)
    buf = io.BytesIO()
    # Fixed metadata: the same figure gives the same bytes (the figure cache compares them).
    meta = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None},
            "svg": {"Date": None}}[fmt]
    fig.savefig(buf, format=fmt, dpi=getattr(fig, "_lth_dpi", 100), metadata=meta)  # constrained layout fits the labels
    return buf.getvalue()


def close(fig: Figure) -> None:
    plt.close(fig)


def _col(t: pa.Table, name: str) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in t[name].to_pylist()], dtype=float)


def _where(t: pa.Table, **eq) -> pa.Table:
    for k, v in eq.items():
        t = t.filter(pc.equal(t[k], v))
    return t


def _pct(x, _pos=None) -> str:
    return f"{100 * x:.3g}%"


def density_label(d: float | None, level: int) -> str:
    return f"{_pct(d)} remaining" if d else f"level {level}"


# ---- one colour per meaning, in every figure --------------------------------------------------
# A pruning level keeps its colour in every figure (the instability, path and learning-curve
# figures draw levels; the dense network is black everywhere), a rewinding point k its colour
# (viridis by rank among the experiment's k: early light to late dark... without the pale
# yellow end, which a white page washes out), a retrain mode its colour, and an experiment its
# colour in a comparison.
DENSE_COLOR = "black"
_LEVEL_CYCLE = plt.get_cmap("tab10").colors
# A retrain mode, control or pruning-at-init method: one colour each, the same as a mode
# (`rewind`) and as a family (`imp_rewind`), in every figure of every experiment; an ablation
# shares its method's colour with a line style of its own.
MODE_COLORS = {"rewind": "#1f77b4", "lr_rewind": "#ff7f0e", "finetune": "#2ca02c",
               "random_prune": "#7f7f7f", "random_reinit": "#9467bd", "random_reinit_signs": "#c5b0d5",
               "snip": "#d62728", "grasp": "#e377c2", "grasp_abs": "#f7b6d2", "synflow": "#17becf",
               "magnitude_init": "#8c564b", "random_init": "#bcbd22", "dense": DENSE_COLOR}
# methods without a colour of their own (a new one): colours no mode above uses
_SPARE_COLORS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d")
EXPERIMENT_COLORS = plt.get_cmap("Dark2").colors


def level_color(level: int):
    return DENSE_COLOR if level == 0 else _LEVEL_CYCLE[(level - 1) % len(_LEVEL_CYCLE)]


def k_colors(ks) -> dict[int, tuple]:
    ks = sorted(set(int(k) for k in ks))
    return {k: c for k, c in zip(ks, plt.get_cmap("viridis")(np.linspace(0, 0.75, max(len(ks), 1))))}


def mode_color(mode: str, i: int = 0):
    """A mode's or family's colour (imp_rewind is rewind's); `i` picks a spare one for a name
    without its own."""
    base = mode.partition("+")[0].removeprefix("imp_")
    return MODE_COLORS.get(base, _SPARE_COLORS[i % len(_SPARE_COLORS)])


def n_text(counts, unit: str) -> str:
    """'n = 2 pairs', or 'n = 1–3 pairs' when cells differ: the sample size a reader needs
    beside every mean ± std, in the figure itself (titles are optional)."""
    vals = sorted({int(v) for v in counts if v is not None and v == v and v > 0})
    if not vals:
        return f"n = 0 {unit}"
    n = str(vals[0]) if len(vals) == 1 else f"{vals[0]}–{vals[-1]}"
    return f"n = {n} {unit}"


def without_title(fig: Figure) -> None:
    """`lth analyze --no-titles`: the figure without its title (a paper's caption replaces it);
    the panels' own headings (split, density, k) stay, as they say what each panel holds."""
    if getattr(fig, "_suptitle", None) is not None:
        fig._suptitle.remove()
        fig._suptitle = None


def _all_zero(values) -> bool:
    v = np.concatenate([np.ravel(np.asarray(a, dtype=float)) for a in values] or [np.zeros(0)])
    v = v[np.isfinite(v)]
    return v.size > 0 and bool(np.all(v == 0))


def _splits(t: pa.Table) -> list[str]:
    return sorted(set(t["split"].to_pylist()), key=lambda s: (s != "test", s))


def rewind_axis(ax, ks: list[int]) -> None:
    """Ticks at the measured rewinding points only; the view spans them with a small margin in
    the axis's own scale (no empty stretch left of k = 0, no point on the frame)."""
    ks = sorted(set(int(k) for k in ks))
    pos = [k for k in ks if k > 0]
    # Rewinding points are usually spaced geometrically (0, 100, 500, 2000...).
    if len(pos) >= 2 and max(pos) / min(pos) >= 10:
        ax.set_xscale("symlog", linthresh=min(pos), linscale=0.5)
    ax.set_xticks(ks, [str(k) for k in ks], rotation=45 if len(ks) > 7 else 0)
    ax.xaxis.set_minor_locator(NullLocator())
    tr = ax.xaxis.get_transform()
    lo, hi = tr.transform([ks[0], ks[-1]])
    pad = 0.06 * (hi - lo) if hi > lo else 0.5
    ax.set_xlim(*tr.inverted().transform([lo - pad, hi + pad]))
    ax.set_xlabel("rewinding iteration k")


def sensible_ylim(ax, values, floor: float | None = None, include: tuple[float, ...] = (),
                  ceiling: float | None = None) -> None:
    """A flat or empty panel (every error 0, say) gets a readable range instead of
    matplotlib's ±0.04 around the value; `floor` and `ceiling` bound a quantity that cannot
    leave them (a percentage), however wide its ± std band."""
    flat = np.concatenate([np.ravel(np.asarray(a, dtype=float)) for a in values] or [np.zeros(0)])
    v = np.concatenate([flat[np.isfinite(flat)], np.asarray(include, dtype=float)])
    if v.size == 0:
        lo, hi = 0.0, 1.0
    else:
        lo, hi = float(v.min()), float(v.max())
    span = hi - lo
    if span < 0.5:  # under half a point: show at least one point of range
        mid = (lo + hi) / 2
        lo, hi = mid - 0.5, mid + 0.5
        span = 1.0
    lo, hi = lo - 0.08 * span, hi + 0.08 * span
    if floor is not None and lo < floor:
        lo = floor - 0.05 * (hi - floor)  # a point at the floor stays off the frame
    if ceiling is not None and hi > ceiling:
        hi = ceiling + 0.05 * (ceiling - lo)
    ax.set_ylim(lo, hi)


def _legend_right(fig: Figure, ax, right=None) -> None:
    """`ax`'s legend to the right of the axes `right` (default: the top row's last visible
    one), outside every panel and below the title."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if right is None:
        top = [a for a in fig.axes if a.get_visible() and a.get_subplotspec().is_first_row()]
        right = max(top, key=lambda a: a.get_position().x1) if top else ax
    right.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.03, 1), borderaxespad=0, fontsize=8)


def instability_vs_rewind(summary: pa.Table, threshold: float) -> Figure | None:
    modes = sorted(set(summary["mode"].to_pylist()))
    mode = primary_mode(modes)
    if mode is None:
        return None
    t = _where(summary, mode=mode)
    splits = _splits(t)
    # A split whose every barrier is 0 (a network stable everywhere on it) says so in a note, not
    # in a flat panel; the first split keeps its panel whatever it holds.
    zero = [sp for sp in splits[1:] if _all_zero([_col(_where(t, split=sp), "barrier_mean")])]
    splits = [sp for sp in splits if sp not in zero]
    levels = _pick(sorted(set(t["level"].to_pylist())))
    ks = sorted(set(t["rewind_iter"].to_pylist()))
    fig, axes = plt.subplots(1, len(splits), figsize=(4.6 * len(splits) + 1.6, 3.8), squeeze=False,
                             layout="constrained", sharey=True)
    ys = []
    for ax, split in zip(axes[0], splits):
        for lv in levels:
            c = _where(t, split=split, level=lv).sort_by("rewind_iter")
            x = _col(c, "rewind_iter")
            y, lo, hi = _ci(c, "barrier")
            ys += [lo, hi]
            n = f"{n_text(c['n_replicates'].to_pylist(), 'replicates')}, {n_text(c['n_pairs'].to_pylist(), 'pairs')[4:]}"
            label = f"{density_label(c['density'][0].as_py(), lv)} ({n})"
            line, = ax.plot(x, y, marker="o", color=level_color(lv), label=label)
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
        ax.axhline(100 * threshold, color="k", ls="--", lw=1, label=f"stable below {100 * threshold:g} points")
        rewind_axis(ax, ks)
        ax.set_title(f"{split} set")
        ax.grid(alpha=0.3)
    sensible_ylim(axes[0][0], ys, include=(0.0, 100 * threshold))
    axes[0][0].set_ylabel("error barrier (percentage points)")
    _legend_right(fig, axes[0][0])
    if zero:
        # a figure x label, not free text: constrained layout keeps it below the axis label
        fig.supxlabel(f"{', '.join(zero)} set: every barrier is 0.00 points (panel omitted)", fontsize=8)
    fig.suptitle(f"Instability against the rewinding point ({mode}; mean over pairs, 95% t interval over "
                 "replicates)", fontsize=11)
    return fig


def interpolation_paths(path: pa.Table, all_ks=None) -> Figure | None:
    """Panels: split x density; lines: every measured rewinding point (coloured as in every
    figure of the experiment: `all_ks`, default the path's own)."""
    if path.num_rows == 0:
        return None
    mode = primary_mode(sorted(set(path["mode"].to_pylist())))
    t = _where(path, mode=mode)
    splits = _splits(t)
    ks = sorted(set(t["rewind_iter"].to_pylist()))
    levels = _pick(sorted(set(t["level"].to_pylist())), 4)
    palette = k_colors(all_ks if all_ks is not None else ks)
    colors = [palette[k] for k in ks]
    fig, axes = plt.subplots(len(splits), len(levels), figsize=(3.6 * len(levels) + 1.4, 3.2 * len(splits)),
                             squeeze=False, sharex=True, layout="constrained")
    for i, split in enumerate(splits):
        ys = []
        for j, lv in enumerate(levels):
            ax = axes[i][j]
            d = None
            for color, k in zip(colors, ks):
                c = _where(t, split=split, rewind_iter=k, level=lv).sort_by("alpha")
                if c.num_rows == 0:
                    continue
                d = c["density"][0].as_py()
                x = _col(c, "alpha")
                y, s = 100 * _col(c, "error_mean"), 100 * np.nan_to_num(_col(c, "error_std"))
                ys += [y - s, y + s]
                ax.plot(x, y, color=color, label=f"k = {k}")
                ax.fill_between(x, y - s, y + s, color=color, alpha=0.12)
            if d is not None:
                n = _where(t, split=split, level=lv)["n_pairs"].to_pylist()
                ax.text(0.98, 0.02, n_text(n, "pairs"), transform=ax.transAxes, ha="right", va="bottom", fontsize=8)
            ax.set_title(f"{split}, {density_label(d, lv)}", fontsize=10)
            ax.set_xlim(0, 1)
            ax.margins(x=0)
            ax.grid(alpha=0.3)
            if i == len(splits) - 1:
                ax.set_xlabel("interpolation α")
        for ax in axes[i]:
            sensible_ylim(ax, ys, floor=0.0, ceiling=100.0)
        axes[i][0].set_ylabel(f"{split} error (%)")
    _legend_right(fig, axes[0][0])
    fig.suptitle(f"Error along the linear path between two children ({mode}; mean ± std over pairs)", fontsize=11)
    return fig


def _density_axis(ax, densities: list[float]) -> None:
    ax.set_xscale("log")
    ax.invert_xaxis()  # sparser to the right, as in the papers
    # 100% (the dense network) always on the axis: where the sparse lines start from
    ticks = _pick(sorted(set(d for d in densities if d) | {1.0}), 8)
    if ticks:
        ax.set_xticks(ticks)  # the measured densities: a narrow log range has no decades
        lo, hi = np.log(min(ticks)), np.log(max(ticks))
        pad = 0.06 * (hi - lo) if hi > lo else 0.1
        ax.set_xlim(np.exp(hi + pad), np.exp(lo - pad))
    ax.xaxis.set_major_formatter(FuncFormatter(_pct))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("weights remaining (log scale)")


PUBLISHED_MARKER = dict(marker="D", ms=6, mfc="none", mew=1.4, ls="none", capsize=3, zorder=5)


def draw_published(ax, pts: pa.Table | None, color_of, label_done: set) -> list[np.ndarray]:
    """Published numbers (references.overlay) as hollow diamonds in their family's colour, with
    the published std as an error bar; one legend entry per paper. Returns the y values drawn."""
    ys = []
    if pts is None or pts.num_rows == 0:
        return ys
    for r in pts.to_pylist():
        y, s = 100 * r["acc"], 100 * (r["std"] or 0.0)
        label = f"published: {r['paper']}" + (" (secondary)" if r["secondary"] else "") + " (hollow diamonds)"
        ax.errorbar([r["density"]], [y], yerr=[s] if r["std"] else None, color=color_of(r["family"]),
                    label=label if label not in label_done else "_published", **PUBLISHED_MARKER)
        label_done.add(label)
        ys.append(np.array([y - s, y + s]))
    return ys


def _ci(c: pa.Table, stem: str = "acc") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) in percent; where a cell has no interval (one replicate), low = high = mean."""
    y = 100 * _col(c, f"{stem}_mean")
    lo, hi = 100 * _col(c, f"{stem}_ci_low"), 100 * _col(c, f"{stem}_ci_high")
    return y, np.where(np.isnan(lo), y, lo), np.where(np.isnan(hi), y, hi)


def accuracy_vs_density(acc: pa.Table, dense: dict, all_ks=None, published: pa.Table | None = None) -> Figure | None:
    if acc.num_rows == 0:
        return None
    palette = k_colors(all_ks if all_ks is not None else acc["rewind_iter"].to_pylist())
    modes = sorted(set(acc["mode"].to_pylist()))
    # One panel per mode (lines: rewinding points); with several modes, one more panel
    # comparing them at the rewinding point with the most measurements.
    panels = [("mode", m) for m in modes]
    if len(modes) > 1:
        measured = acc.filter(pc.greater(acc["n_replicates"], 0))
        counts = measured.group_by("rewind_iter").aggregate([("n_replicates", "sum")]).to_pylist()
        k_best = max(counts, key=lambda r: (r["n_replicates_sum"], -r["rewind_iter"]))["rewind_iter"] if counts else None
        if k_best is not None:
            panels.append(("k", k_best))
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(7.5, 4.6 * ncols + 1.6), 3.8 * nrows), squeeze=False,
                             sharey=True, layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    ys = []
    pub_labels: set = set()
    for ax, (kind, val) in zip(axes.flat, panels):
        if kind == "mode":
            t, series, label = _where(acc, mode=val), "rewind_iter", lambda v: f"k = {v}"
            title = f"{val}"
        else:
            t, series, label = _where(acc, rewind_iter=val), "mode", str
            title = f"retrain modes at k = {val}"
        for i, v in enumerate(_pick(sorted(set(t[series].to_pylist())))):
            c = _where(t, **{series: v}).sort_by("density")
            x = _col(c, "density")
            y, lo, hi = _ci(c)
            ys += [lo, hi]
            color = palette[int(v)] if series == "rewind_iter" else mode_color(v, i)
            n = n_text(c["n_replicates"].to_pylist(), "replicates")
            line, = ax.plot(x, y, marker="o", ms=3, color=color, label=f"{label(v)} ({n})")
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
        if dense["mean"] is not None:
            m = 100 * dense["mean"]
            lo = 100 * dense["ci_low"] if dense.get("ci_low") is not None else m
            hi = 100 * dense["ci_high"] if dense.get("ci_high") is not None else m
            ys += [np.array([lo, hi])]
            ax.axhline(m, color=DENSE_COLOR, lw=1, label=f"dense (95% interval; n = {dense.get('n')} replicates)")
            ax.axhspan(lo, hi, color="k", alpha=0.1)
            # the dense network measured at 100%, where every sparse line starts from
            ax.errorbar([1.0], [m], yerr=[[m - lo], [hi - m]], color=DENSE_COLOR, marker="o", ms=4, capsize=2,
                        label="_dense point")
        pub = None
        if published is not None and published.num_rows:
            if kind == "mode":
                fam = "dense" if val == "dense" else (f"imp_{val}" if val in ("rewind", "lr_rewind", "finetune") else val)
                pub = published.filter(pc.or_(pc.equal(published["family"], fam),
                                              pc.equal(published["family"], "dense")))
                ys += draw_published(ax, pub, lambda f: DENSE_COLOR if f == "dense" else "0.25", pub_labels)
        _density_axis(ax, acc["density"].to_pylist() + ([] if pub is None else pub["density"].to_pylist()))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if kind == "k":  # other lines than the mode panels: a legend of its own, below
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2)
    sensible_ylim(axes.flat[0], ys, floor=0.0, ceiling=100.0)
    # The mode panels' lines (k = ...) in one figure legend: the retrain-modes panel keeps its own
    # legend (another meaning of colour), which a legend placed beside it would replace.
    seen: dict[str, object] = {}
    for ax, (kind, _val) in zip(axes.flat, panels):
        if kind == "mode":
            for h, lab in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(lab, h)
    if seen:
        # centred: "upper" puts it level with the suptitle, which spans the legend's column too
        fig.legend(list(seen.values()), list(seen), loc="outside right center", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    fig.suptitle("Test accuracy against the weights remaining (mean and 95% t interval over replicates)", fontsize=11)
    return fig


def learning_curves(curves: pa.Table) -> Figure | None:
    """curves: rewind_iter, level, density, split, iteration, acc_mean, acc_std, n_replicates
    (see analysis.curves); panels: split (rows) x rewinding point k (columns, at most four);
    lines: the dense network and the chosen levels, each in its level's colour. The accuracy
    axis spans the second half of training (where levels differ by a point or two), not the
    climb from chance that would flatten them."""
    if curves.num_rows == 0:
        return None
    splits = _splits(curves)
    dense = _where(curves, level=0)
    sparse = curves.filter(pc.greater(curves["level"], 0))
    ks = _pick(sorted(set(sparse["rewind_iter"].to_pylist())), 4) or [0]
    levels = sorted(set(sparse["level"].to_pylist()))
    fig, axes = plt.subplots(len(splits), len(ks), figsize=(3.8 * len(ks) + 1.8, 3.2 * len(splits)),
                             squeeze=False, layout="constrained", sharex=True, sharey="row")
    last = max(curves["iteration"].to_pylist())
    for i, split in enumerate(splits):
        ys = []
        for j, k in enumerate(ks):
            ax = axes[i][j]
            lines = [(0, _where(dense, split=split))] + [
                (lv, _where(sparse, split=split, level=lv, rewind_iter=k)) for lv in levels]
            for lv, c in lines:
                c = c.sort_by("iteration")
                if c.num_rows == 0:
                    continue
                x = _col(c, "iteration")
                y, s = 100 * _col(c, "acc_mean"), 100 * np.nan_to_num(_col(c, "acc_std"))
                late = x > last / 2
                ys += [(y - s)[late], (y + s)[late]]
                n = n_text(c["n_replicates"].to_pylist(), "replicates")
                label = ("dense" if lv == 0 else density_label(c["density"][0].as_py(), lv)) + f" ({n})"
                line, = ax.plot(x, y, marker="o" if len(x) <= 40 else None, ms=3, color=level_color(lv), label=label)
                ax.fill_between(x, y - s, y + s, color=line.get_color(), alpha=0.15)
            ax.set_title(f"{split} set, sparse levels rewound to k = {k}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(splits) - 1:
                ax.set_xlabel("training iteration")
        sensible_ylim(axes[i][0], ys, floor=0.0, ceiling=100.0)
        axes[i][0].set_ylabel(f"{split} accuracy (%)\n(second half of training)", fontsize=9)
    _legend_right(fig, axes[0][0])
    fig.suptitle("Learning curves: dense and pruned networks at every rewinding point (mean ± std over "
                 "replicates)", fontsize=11)
    return fig


def compare_instability(summaries: dict[str, pa.Table], threshold: float,
                        labels: dict[str, str] | None = None) -> Figure | None:
    """Panels: up to four densities (test split, each experiment's primary mode); lines:
    experiments, named by `labels` (what differs: `demo (lr 0.05)`), one colour each."""
    labels = labels or {}
    colors = {n: EXPERIMENT_COLORS[i % len(EXPERIMENT_COLORS)] for i, n in enumerate(summaries)}
    cells = {}
    for name, s in summaries.items():
        mode = primary_mode(sorted(set(s["mode"].to_pylist())))
        if mode is None:
            continue
        t = _where(s, mode=mode)
        split = "test" if "test" in t["split"].to_pylist() else _splits(t)[0]
        cells[name] = _where(t, split=split)
    if not cells:
        return None
    levels = _pick(sorted(set().union(*(set(t["level"].to_pylist()) for t in cells.values()))), 4)
    ks = sorted(set().union(*(set(t["rewind_iter"].to_pylist()) for t in cells.values())))
    fig, axes = plt.subplots(1, len(levels), figsize=(3.8 * len(levels) + 1.8, 3.6), squeeze=False,
                             layout="constrained", sharey=True)
    ys = []
    for ax, lv in zip(axes[0], levels):
        d = None
        for name, t in cells.items():
            c = _where(t, level=lv).sort_by("rewind_iter")
            if c.num_rows == 0:
                continue
            d = d or c["density"][0].as_py()
            x = _col(c, "rewind_iter")
            y, lo, hi = _ci(c, "barrier")
            ys += [lo, hi]
            n = f"{n_text(c['n_replicates'].to_pylist(), 'replicates')}, {n_text(c['n_pairs'].to_pylist(), 'pairs')[4:]}"
            line, = ax.plot(x, y, marker="o", color=colors[name], label=f"{labels.get(name, name)} ({n})")
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
        ax.axhline(100 * threshold, color="k", ls="--", lw=1, label=f"stable below {100 * threshold:g} points")
        rewind_axis(ax, ks)
        ax.set_title(density_label(d, lv), fontsize=10)
        ax.grid(alpha=0.3)
    sensible_ylim(axes[0][0], ys, include=(0.0, 100 * threshold))
    axes[0][0].set_ylabel("test error barrier (percentage points)")
    _legend_right(fig, axes[0][0])
    fig.suptitle("Instability against the rewinding point, by experiment (mean over pairs, 95% t interval over "
                 "replicates)", fontsize=11)
    return fig


def compare_accuracy(accs: dict[str, tuple[pa.Table, dict]], labels: dict[str, str] | None = None) -> Figure | None:
    """One panel per rewinding point both experiments measured (at most three); lines:
    experiments (primary mode, named by `labels`), with each one's dense accuracy as a dashed line."""
    labels = labels or {}
    colors = {n: EXPERIMENT_COLORS[i % len(EXPERIMENT_COLORS)] for i, n in enumerate(accs)}
    tables = {}
    for name, (acc, dense) in accs.items():
        mode = primary_mode(sorted(set(acc["mode"].to_pylist())))
        if mode is not None:
            tables[name] = (_where(acc, mode=mode), dense)
    if not tables:
        return None
    ks = sorted(set.intersection(*(set(t["rewind_iter"].to_pylist()) for t, _ in tables.values()))) \
        or sorted(set().union(*(set(t["rewind_iter"].to_pylist()) for t, _ in tables.values())))
    ks = _pick(ks, 3)
    fig, axes = plt.subplots(1, len(ks), figsize=(4.2 * len(ks) + 1.8, 3.8), squeeze=False,
                             layout="constrained", sharey=True)
    ys = []
    for ax, k in zip(axes[0], ks):
        for name, (t, dense) in tables.items():
            c = _where(t, rewind_iter=k).sort_by("density")
            x = _col(c, "density")
            y, lo, hi = _ci(c)
            ys += [lo, hi]
            n = n_text(c["n_replicates"].to_pylist(), "replicates")
            line, = ax.plot(x, y, marker="o", ms=3, color=colors[name], label=f"{labels.get(name, name)} ({n})")
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
            if dense["mean"] is not None:
                ys.append(np.array([100 * dense["mean"]]))
                ax.axhline(100 * dense["mean"], color=line.get_color(), ls=":", lw=1,
                           label=f"{labels.get(name, name)}: dense")
        _density_axis(ax, [d for t, _ in tables.values() for d in t["density"].to_pylist()])
        ax.set_title(f"k = {k}", fontsize=10)
        ax.grid(alpha=0.3)
    sensible_ylim(axes[0][0], ys, floor=0.0, ceiling=100.0)
    axes[0][0].set_ylabel("test accuracy (%)")
    _legend_right(fig, axes[0][0])
    fig.suptitle("Test accuracy against the weights remaining, by experiment (mean and 95% t interval over replicates)",
                 fontsize=11)
    return fig


# ---- methods: IMP, controls, pruning at initialization (orchestrator/analysis/methods.py) -----

_ABLATION_STYLE = {"": "-", "shuffle": "--", "reinit": ":", "invert": "-."}


def _family_style(families: list[str]) -> dict[str, dict]:
    """A colour per method (an ablation shares its method's colour, with its own line style)."""
    bases = sorted({f.partition("+")[0] for f in families}, key=lambda b: (not b.startswith("imp_"), b))
    colour = {b: mode_color(b, i) for i, b in enumerate(bases)}
    return {f: {"color": colour[f.partition("+")[0]], "ls": _ABLATION_STYLE.get(f.partition("+")[2], "-")}
            for f in families}


def _main_k(t: pa.Table) -> int | None:
    """The rewinding point with the most families measured (pruning at init's k first)."""
    counts: dict[int, set] = {}
    for f, k in zip(t["family"].to_pylist(), t["rewind_iter"].to_pylist()):
        counts.setdefault(k, set()).add(f)
    return max(counts, key=lambda k: (len(counts[k]), -k)) if counts else None


def method_comparison(methods: pa.Table, num_classes: int | None, published: pa.Table | None = None) -> Figure | None:
    """Every family against the weights remaining at one rewinding point (mean and 95% t
    interval over replicates): on the left the test accuracy, zoomed to the data, with the
    dense network and the published numbers (hollow diamonds); on the right each family's
    difference from the dense network in points, where differences between methods show.
    Chance is a line where it falls in the view, else a note under the panel (a line at 10%
    would squash every difference into a few pixels)."""
    if methods is None:
        return None
    sparse = methods.filter(pc.greater(methods["level"], 0))
    families = sorted(set(sparse["family"].to_pylist()))
    if len(families) < 2:
        return None
    k = _main_k(sparse)
    t = _where(sparse, rewind_iter=k)
    style = _family_style(families)
    dense = _where(methods, family="dense")
    m = 100 * float(np.nanmean(_col(dense, "acc_mean"))) if dense.num_rows else None
    fig, (ax, axd) = plt.subplots(1, 2, figsize=(12.5, 4.6), layout="constrained")
    ys, ds = [], []
    for f in sorted(set(t["family"].to_pylist()), key=lambda f: (not f.startswith("imp_"), f)):
        c = _where(t, family=f).sort_by("density")
        x = _col(c, "density")
        y, lo, hi = _ci(c)
        ys += [lo, hi]
        n = n_text(c["n_replicates"].to_pylist(), "replicates")
        ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", ms=3, capsize=2, lw=1.3, label=f"{f} ({n})", **style[f])
        if m is not None:
            ds += [lo - m, hi - m]
            axd.errorbar(x, y - m, yerr=[y - lo, hi - y], marker="o", ms=3, capsize=2, lw=1.3, label="_" + f,
                         **style[f])
    if m is not None:
        ys.append(np.array([m]))
        ax.axhline(m, color=DENSE_COLOR, lw=1, label=f"dense (n = {dense.num_rows and int(np.nansum(_col(dense, 'n_replicates')))} replicates)")
        axd.axhline(0.0, color=DENSE_COLOR, lw=1, label="_dense")
    pub = None
    if published is not None and published.num_rows:
        fams = set(t["family"].to_pylist()) | {"dense"}
        pub = published.filter(pc.and_(pc.is_in(published["family"], value_set=pa.array(sorted(fams))),
                                       pc.or_(pc.equal(published["rewind_iter"], k),
                                              pc.equal(published["family"], "dense"))))
        ys += draw_published(ax, pub, lambda f: DENSE_COLOR if f == "dense" else style[f]["color"], set())
    xs = t["density"].to_pylist() + ([] if pub is None else pub["density"].to_pylist())
    _density_axis(ax, xs)
    sensible_ylim(ax, ys, ceiling=100.0)
    if num_classes:
        chance = 100 / num_classes
        lo, hi = ax.get_ylim()
        if lo <= chance <= hi:
            ax.axhline(chance, color="0.5", lw=1, ls=":", label=f"chance ({chance:.3g}%)")
        else:
            ax.annotate(f"chance: {chance:.3g}% (below the view)", xy=(0, 0), xycoords="axes fraction",
                        xytext=(2, -40), textcoords="offset points", fontsize=8, color="0.35", va="top")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_title(f"test accuracy, k = {k}", fontsize=10)
    if m is None:
        axd.set_visible(False)
    else:
        _density_axis(axd, t["density"].to_pylist())
        sensible_ylim(axd, ds, include=(0.0,))
        axd.set_ylabel("accuracy − dense (points)")
        axd.grid(alpha=0.3)
        axd.set_title(f"difference from the dense network, k = {k}", fontsize=10)
    _legend_right(fig, ax, right=axd if m is not None else ax)
    fig.suptitle("Every family at IMP's densities: test accuracy (mean and 95% t interval over replicates)",
                 fontsize=11)
    return fig


def layer_profiles(profiles: pa.Table | None, level: int | None) -> Figure | None:
    """Fraction of each layer kept, one line per family, at one level (default: the deepest).
    Shuffle and reinit ablations keep their method's per-layer counts by construction, so they
    are not drawn."""
    if profiles is None or profiles.num_rows == 0:
        return None
    t = profiles.filter(pc.greater(profiles["level"], 0))
    if t.num_rows == 0:
        return None
    lv = max(t["level"].to_pylist()) if level is None else level
    t = _where(t, level=lv)
    if t.num_rows == 0:
        return None
    k = _main_k(t)
    t = _where(t, rewind_iter=k)
    families = [f for f in sorted(set(t["family"].to_pylist()), key=lambda f: (not f.startswith("imp_"), f))
                if f.partition("+")[2] not in ("shuffle", "reinit")]
    style = _family_style(families)
    names = [n for _, n in sorted(set(zip(t["layer_index"].to_pylist(), t["layer"].to_pylist())))]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.45 * len(names) + 4.0), 4.4), layout="constrained")
    for f in families:
        c = _where(t, family=f).sort_by("layer_index")
        ax.plot(_col(c, "layer_index"), 100 * _col(c, "density"), marker="o", ms=3, label=f, **style[f])
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:.3g}%"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _p: f"{v:.3g}%"))
    lo, hi = ax.get_ylim()
    if hi / lo > 3:  # every minor label (.., 8%, 9%, 10%) would run into the next near a decade's top
        ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("weights kept in the layer (%, log scale)")
    ax.grid(alpha=0.3)
    ax.set_title(f"level {lv}, k = {k}", fontsize=10)
    _legend_right(fig, ax)
    fig.suptitle("Per-layer density: what each method keeps where", fontsize=11)
    return fig


def weight_correlation(methods: pa.Table | None) -> Figure | None:
    """Pearson r of starting and final weights (kept weights) against the weights remaining."""
    if methods is None or methods.num_rows == 0:
        return None
    t = methods.filter(pc.invert(pc.is_null(methods["weight_correlation_mean"])))
    sparse = t.filter(pc.greater(t["level"], 0))
    if sparse.num_rows == 0:
        return None
    k = _main_k(sparse)
    sparse = _where(sparse, rewind_iter=k)
    families = sorted(set(sparse["family"].to_pylist()), key=lambda f: (not f.startswith("imp_"), f))
    style = _family_style(families)
    fig, ax = plt.subplots(figsize=(8.5, 4.4), layout="constrained")
    for f in families:
        c = _where(sparse, family=f).sort_by("density")
        y, lo, hi = (v / 100 for v in _ci(c, "weight_correlation"))  # _ci is in percent; r is not
        n = n_text(c["n_replicates"].to_pylist(), "replicates")
        ax.errorbar(_col(c, "density"), y, yerr=[y - lo, hi - y],
                    marker="o", ms=3, capsize=2, lw=1.3, label=f"{f} ({n})", **style[f])
    dense = _where(t, family="dense")
    if dense.num_rows:
        ax.axhline(float(np.nanmean(_col(dense, "weight_correlation_mean"))), color="k", lw=1, label="dense (W_0 vs W_T)")
    _density_axis(ax, sparse["density"].to_pylist())
    ax.set_ylabel("weight correlation (Pearson r)")
    ax.grid(alpha=0.3)
    ax.set_title(f"k = {k}", fontsize=10)
    _legend_right(fig, ax)
    fig.suptitle("Correlation of starting and final weights by level (mean and 95% t interval over replicates)",
                 fontsize=11)
    return fig


def compare_weight_correlation(tables: dict[str, pa.Table]) -> Figure | None:
    """Weight correlation of each experiment's IMP lineage (rewind, else its first family)
    against the weights remaining: the learning-rate question of Liu et al. 2021."""
    fig, ax = plt.subplots(figsize=(8.0, 4.2), layout="constrained")
    drawn, dens = 0, []
    # an experiment keeps the colour the other comparison figures give it
    colors = {n: EXPERIMENT_COLORS[i % len(EXPERIMENT_COLORS)] for i, n in enumerate(tables)}
    for name, m in tables.items():
        if m is None:
            continue
        t = m.filter(pc.and_(pc.greater(m["level"], 0), pc.invert(pc.is_null(m["weight_correlation_mean"]))))
        fams = sorted(set(t["family"].to_pylist()))
        if not fams:
            continue
        fam = "imp_rewind" if "imp_rewind" in fams else fams[0]
        t = _where(t, family=fam)
        k = min(t["rewind_iter"].to_pylist())
        t = _where(t, rewind_iter=k).sort_by("density")
        y, lo, hi = (v / 100 for v in _ci(t, "weight_correlation"))
        n = n_text(t["n_replicates"].to_pylist(), "replicates")
        ax.errorbar(_col(t, "density"), y, yerr=[y - lo, hi - y],
                    marker="o", ms=3, capsize=2, color=colors[name], label=f"{name} ({fam}, k = {k}, {n})")
        dens += t["density"].to_pylist()
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    _density_axis(ax, dens)
    ax.set_ylabel("weight correlation (Pearson r)")
    ax.grid(alpha=0.3)
    _legend_right(fig, ax)
    fig.suptitle("Correlation of starting and final weights, by experiment (mean and 95% t interval over replicates)",
                 fontsize=11)
    return fig


def early_bird_distances(dist: pa.Table | None) -> Figure | None:
    """The early-bird paper's figure: normalised Hamming distance between the masks of every two
    epochs of a search, one panel per fraction (orchestrator/analysis/structured.py)."""
    if dist is None or dist.num_rows == 0:
        return None
    fractions = sorted(set(dist["fraction"].to_pylist()))
    fig, axes = plt.subplots(1, len(fractions), figsize=(3.6 * len(fractions) + 1.2, 3.4), squeeze=False,
                             layout="constrained")
    cols = [n for n in dist.column_names if n.startswith("vs_epoch_")]
    for ax, p in zip(axes.flat, fractions):
        t = _where(dist, fraction=p).sort_by("epoch")
        m = np.array([[np.nan if v is None else v for v in t[c].to_pylist()] for c in cols], dtype=float).T
        im = ax.imshow(m, cmap="viridis", origin="upper", vmin=0.0)
        ax.set_title(f"p = {p:g}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("epoch")
    fig.colorbar(im, ax=axes.ravel().tolist(), label="mask distance")
    return fig


def transfer_accuracy(table: pa.Table | None, num_classes: int | None) -> Figure | None:
    """Ticket transfer: test accuracy against the weights remaining for the transferred ticket,
    its controls and the target's own IMP ticket (mean ± std over replicates), the target's dense
    network and chance marked (orchestrator/analysis/transfer.py)."""
    if table is None or table.num_rows == 0:
        return None
    sparse = table.filter(pc.greater(table["level"], 0))
    families = [f for f in ("transfer", "transfer_random_mask", "transfer_fresh_weights", "target_imp")
                if f in set(sparse["family"].to_pylist())]
    style = _family_style(families)
    fig, ax = plt.subplots(figsize=(8.5, 4.6), layout="constrained")
    ys = []
    for f in families:
        c = _where(sparse, family=f).sort_by("density")
        x, y = _col(c, "density"), 100 * _col(c, "acc_mean")
        s = 100 * np.nan_to_num(_col(c, "acc_std"))
        ys += [y - s, y + s]
        ax.errorbar(x, y, yerr=s, marker="o", ms=3, capsize=2, lw=1.3, label=f, **style[f])
    dense = _where(table, family="target_dense")
    if dense.num_rows:
        m = 100 * float(np.nanmean(_col(dense, "acc_mean")))
        ys.append(np.array([m]))
        ax.axhline(m, color="k", lw=1, label="target dense")
    if num_classes:
        ax.axhline(100 / num_classes, color="0.5", lw=1, ls=":", label=f"chance ({100 / num_classes:.3g}%)")
        ys.append(np.array([100 / num_classes]))
    _density_axis(ax, sparse["density"].to_pylist())
    sensible_ylim(ax, ys, floor=0.0, ceiling=100.0)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    source = table["source_data"][0].as_py(), table["source_optimizer"][0].as_py()
    ax.set_title(f"tickets from {source[0]} ({source[1]})", fontsize=10)
    _legend_right(fig, ax)
    fig.suptitle("Ticket transfer: test accuracy (mean ± std over replicates)", fontsize=11)
    return fig
