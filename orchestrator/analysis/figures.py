"""The figures of the lottery-ticket papers, drawn from the summary tables, as PNG bytes.

Missing cells are NaN, which matplotlib draws as gaps (never as zeros).
"""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

MAX_LINES = 6  # more lines than this are unreadable: pick evenly spaced ones


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)  # constrained layout already fits the labels
    plt.close(fig)
    return buf.getvalue()


def _pick(values: list, n: int = MAX_LINES) -> list:
    if len(values) <= n:
        return values
    idx = np.unique(np.linspace(0, len(values) - 1, n).round().astype(int))
    return [values[i] for i in idx]


def _col(t: pa.Table, name: str) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in t[name].to_pylist()], dtype=float)


def _where(t: pa.Table, **eq) -> pa.Table:
    for k, v in eq.items():
        t = t.filter(pc.equal(t[k], v))
    return t


def _pct(x, _pos=None) -> str:
    return f"{100 * x:.3g}%"


def _rewind_axis(ax, ks: list[int]) -> None:
    pos = [k for k in ks if k > 0]
    # Rewinding points are usually spaced geometrically (0, 100, 500, 2000...).
    if len(pos) >= 2 and max(pos) / min(pos) >= 10:
        ax.set_xscale("symlog", linthresh=min(pos))
    ax.set_xlabel("rewinding iteration k")


def primary_mode(modes: list[str]) -> str | None:
    return "rewind" if "rewind" in modes else (sorted(modes)[0] if modes else None)


def instability_vs_rewind(summary: pa.Table, threshold: float) -> bytes | None:
    modes = sorted(set(summary["mode"].to_pylist()))
    mode = primary_mode(modes)
    if mode is None:
        return None
    t = _where(summary, mode=mode)
    splits = sorted(set(t["split"].to_pylist()), key=lambda s: (s != "test", s))
    levels = _pick(sorted(set(t["level"].to_pylist())))
    ks = sorted(set(t["rewind_iter"].to_pylist()))
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4), squeeze=False,
                             layout="constrained")
    for ax, split in zip(axes[0], splits):
        for lv in levels:
            c = _where(t, split=split, level=lv).sort_by("rewind_iter")
            x = _col(c, "rewind_iter")
            y, s = 100 * _col(c, "barrier_mean"), 100 * np.nan_to_num(_col(c, "barrier_std"))
            d = c["density"][0].as_py()
            line, = ax.plot(x, y, marker="o", label=f"{_pct(d)} remaining" if d else f"level {lv}")
            ax.fill_between(x, y - s, y + s, color=line.get_color(), alpha=0.15)
        ax.axhline(100 * threshold, color="k", ls="--", lw=1, label="stability threshold")
        _rewind_axis(ax, ks)
        ax.set_ylabel(f"error barrier on {split} (percentage points)")
        ax.set_title(f"Instability vs rewinding point ({split}, {mode})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


def interpolation_paths(path: pa.Table) -> bytes | None:
    if path.num_rows == 0:
        return None
    mode = primary_mode(sorted(set(path["mode"].to_pylist())))
    t = _where(path, mode=mode)
    splits = sorted(set(t["split"].to_pylist()), key=lambda s: (s != "test", s))
    ks = _pick(sorted(set(t["rewind_iter"].to_pylist())), 3)
    levels = _pick(sorted(set(t["level"].to_pylist())), 5)
    fig, axes = plt.subplots(len(splits), len(ks), figsize=(4.5 * len(ks), 3.6 * len(splits)),
                             squeeze=False, sharey="row", layout="constrained")
    for i, split in enumerate(splits):
        for j, k in enumerate(ks):
            ax = axes[i][j]
            for lv in levels:
                c = _where(t, split=split, rewind_iter=k, level=lv).sort_by("alpha")
                if c.num_rows == 0:
                    continue
                x = _col(c, "alpha")
                y, s = 100 * _col(c, "error_mean"), 100 * np.nan_to_num(_col(c, "error_std"))
                line, = ax.plot(x, y, label=f"{_pct(c['density'][0].as_py())} remaining")
                ax.fill_between(x, y - s, y + s, color=line.get_color(), alpha=0.15)
            ax.set_xlabel("interpolation alpha")
            ax.set_ylabel(f"{split} error (%)")
            ax.set_title(f"k = {k}, {split}")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    fig.suptitle(f"Error along the linear path between two children ({mode})")
    return _png(fig)


def accuracy_vs_density(acc: pa.Table, dense: dict) -> bytes | None:
    if acc.num_rows == 0:
        return None
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
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4.2 * nrows), squeeze=False,
                             sharey=True, layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    ticks = _pick(sorted(set(d for d in acc["density"].to_pylist() if d)), 8)
    for ax, (kind, val) in zip(axes.flat, panels):
        if kind == "mode":
            t, series, label = _where(acc, mode=val), "rewind_iter", lambda v: f"k = {v}"
            title = f"Test accuracy vs density ({val})"
        else:
            t, series, label = _where(acc, rewind_iter=val), "mode", str
            title = f"Retrain modes at k = {val}"
        for v in _pick(sorted(set(t[series].to_pylist()))):
            c = _where(t, **{series: v}).sort_by("density")
            x = _col(c, "density")
            y, s = 100 * _col(c, "acc_mean"), 100 * np.nan_to_num(_col(c, "acc_std"))
            line, = ax.plot(x, y, marker="o", ms=3, label=label(v))
            ax.fill_between(x, y - s, y + s, color=line.get_color(), alpha=0.15)
        if dense["mean"] is not None:
            m, s = 100 * dense["mean"], 100 * (dense["std"] or 0.0)
            ax.axhline(m, color="k", lw=1, label="dense (± 1 std)")
            ax.axhspan(m - s, m + s, color="k", alpha=0.1)
        ax.set_xscale("log")
        ax.invert_xaxis()  # sparser to the right, as in the papers
        ax.set_xticks(ticks)  # the measured densities: a narrow log range has no decades
        ax.xaxis.set_major_formatter(FuncFormatter(_pct))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
        ax.set_xlabel("weights remaining (log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return _png(fig)
