"""`lth analyze`: a sweep's Parquet tables -> the tables, figures and report of the LTH papers.

Answers from the store alone, for a finished or a running sweep:
at which rewinding point does the network become stable, down to which density does the
ticket match the dense network, and how do the retrain modes compare at equal budget.
"""
from __future__ import annotations

import io
import json
import math
import os
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from orchestrator.analysis import figures as figs
from orchestrator.analysis import tables as T
from orchestrator.analysis.read import (
    INSTABILITY_COLUMNS, INTERPOLATION_COLUMNS, RUNS_COLUMNS, ScanCache, Store, known_experiments,
    only_planned, plan_job_ids, read_config_text, read_num_classes, read_progress, read_table,
)
from orchestrator.analysis.report import MISSING, fmt, render

__all__ = ["analyze", "AnalysisResult", "compute"]

WANDB_MODES = ("disabled", "offline", "online")


@dataclass
class AnalysisResult:
    """Everything the analysis derives from one experiment (pure data, no files)."""

    instability: pa.Table
    earliest_stable: pa.Table
    accuracy: pa.Table
    winning_tickets: pa.Table
    dense: dict
    retrain_comparison: pa.Table | None
    interpolation_path: pa.Table
    barrier_check: dict
    n_train_runs: int
    n_pairs: int

    def tables(self) -> list[tuple[str, str, pa.Table]]:
        """(file stem, title, table) of every table the analysis writes."""
        d = self.dense
        out = [
            ("instability", "Instability: error barrier by mode, level, rewinding point and split",
             self.instability),
            ("stability_onset", "Onset of stability: the smallest rewinding point from which every larger "
             "one is stable, per density", self.earliest_stable),
            ("accuracy", "Test accuracy by density, rewinding point and retrain mode", self.accuracy),
            ("winning_tickets", "Smallest matching density per rewinding point (the winning ticket)",
             self.winning_tickets),
            ("dense", "Dense network (level 0) test accuracy",
             pa.table({"acc_mean": pa.array([d["mean"]], pa.float64()),
                       "acc_std": pa.array([d["std"]], pa.float64()),
                       "n_replicates": pa.array([d["n"]], pa.int64())})),
        ]
        if self.retrain_comparison is not None:
            out.append(("retrain_comparison",
                        "Retrain modes and controls at equal total training iterations",
                        self.retrain_comparison))
        out.append(("interpolation_path", "Error along the interpolation path (mean over pairs)",
                    self.interpolation_path))
        return out


def compute(runs: pa.Table, instability: pa.Table, interpolation: pa.Table,
            threshold: float, num_classes: int | None = None) -> AnalysisResult:
    """The whole analysis from the three raw tables (file-free; tests call it directly).
    `num_classes` sets the chance error (None: no cell is called at chance)."""
    runs_m = T.add_mode(runs)
    barriers, check = T.combine_barriers(instability, T.barriers_from_interpolation(interpolation))
    barriers = T.add_pair_mode(barriers, runs_m)
    sparse = runs_m.filter(pc.greater(runs_m["level"], 0))
    rewind_iters = sorted(set(sparse["rewind_iter"].drop_null().to_pylist())
                          | set(barriers["rewind_iter"].drop_null().to_pylist()))
    densities = T.level_densities(runs_m, barriers)
    summary = T.instability_summary(barriers, threshold, rewind_iters, densities, num_classes)
    dense = T.dense_accuracy(runs_m)
    acc = T.accuracy_summary(runs_m, dense)
    return AnalysisResult(
        instability=summary,
        earliest_stable=T.stability_onset(summary),  # the onset of stability (tables.py)
        accuracy=acc,
        winning_tickets=T.winning_tickets(acc),
        dense=dense,
        retrain_comparison=T.retrain_comparison(T.add_training_budget(runs_m)),
        interpolation_path=T.path_summary(interpolation, barriers),
        barrier_check=check,
        n_train_runs=runs.num_rows,
        n_pairs=pc.count_distinct(barriers["pair_id"]).as_py() if barriers.num_rows else 0,
    )


class _Clock:
    def __init__(self):
        self.t, self.laps = time.perf_counter(), {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.t, 3)
        self.t = now


class _Out:
    """Where the report goes: the store's filesystem (default) or a local --out directory."""

    def __init__(self, fs: pafs.FileSystem, path: str):
        self.fs, self.path = fs, path.rstrip("/")
        fs.create_dir(self.path, recursive=True)

    def file(self, name: str) -> str:
        return f"{self.path}/{name}"

    def write(self, name: str, data: bytes) -> None:
        # Temp name then rename: a reader never sees a half-written report.
        tmp = self.file(f".{name}.tmp")
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, self.file(name))

    def write_table(self, stem: str, t: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(t, buf)
        self.write(f"{stem}.parquet", buf.getvalue())
        buf = io.BytesIO()
        pacsv.write_csv(t, buf)
        self.write(f"{stem}.csv", buf.getvalue())


def _check_args(store: Store, experiment: str, threshold: float, wandb_mode: str) -> str | None:
    """The reason the arguments are unusable, or None."""
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and 0 < threshold < 1):
        return f"threshold: must be a fraction in (0, 1) (0.02 = 2 points), got {threshold!r}"
    if wandb_mode not in WANDB_MODES:
        return f"wandb_mode: must be one of {', '.join(WANDB_MODES)}, got {wandb_mode!r}"
    if not store.exists(store.root):
        return f"store {store.display!r} does not exist"
    known = known_experiments(store)
    if not known:
        return f"store {store.display!r} is empty: it holds no experiment yet (run `lth run CONFIG`)"
    if experiment not in known:
        return (f"unknown experiment {experiment!r} in store {store.display!r}; "
                f"known experiments: {', '.join(known)}")
    return None


def _print_key_table(console, res: AnalysisResult, threshold: float) -> None:
    from rich.table import Table

    s = res.instability
    modes = sorted(set(s["mode"].to_pylist()))
    mode = figs.primary_mode(modes)
    if mode is not None:
        t = s.filter(pc.and_(pc.equal(s["mode"], mode), pc.equal(s["split"], "test")))
        if t.num_rows == 0:
            t = s.filter(pc.equal(s["mode"], mode))
        split = t["split"][0].as_py()
        ks = sorted(set(t["rewind_iter"].to_pylist()))
        tab = Table(title=f"Error barrier on {split} (percentage points, mean ± std; "
                          f"* stable: < {100 * threshold:g}) — {mode}")
        tab.add_column("density")
        for k in ks:
            tab.add_column(f"k={k}", justify="right")
        tab.add_column("onset of stability k", justify="right")
        earliest = {(r["level"], r["split"]): r for r in res.earliest_stable.to_pylist()
                    if r["mode"] == mode}
        for lv in sorted(set(t["level"].to_pylist())):
            cells = {r["rewind_iter"]: r for r in t.filter(pc.equal(t["level"], lv)).to_pylist()}
            row = [f"{100 * cells[ks[0]]['density']:.3g}%" if cells[ks[0]]["density"] else f"level {lv}"]
            for k in ks:
                r = cells.get(k)
                if r is None or r["barrier_mean"] is None:
                    row.append(MISSING)
                else:
                    std = "" if r["barrier_std"] is None else f" ± {100 * r['barrier_std']:.2f}"
                    row.append(f"{100 * r['barrier_mean']:.2f}{std}{'*' if r['stable'] else ''}")
            e = earliest.get((lv, split))
            row.append(fmt(e["onset_iter"]) + ("" if e is None or e["complete"] else " (partial)")
                       if e else MISSING)
            tab.add_row(*row)
        console.print(tab)
    else:
        console.print("No instability measurements yet.")
    d = res.dense
    if d["mean"] is not None:
        std = f" ± {100 * d['std']:.2f}" if d["std"] is not None else ""
        console.print(f"Dense test accuracy: {100 * d['mean']:.2f}%{std} (n={d['n']})")
    if res.winning_tickets.num_rows:
        tab = Table(title="Winning ticket: smallest density matching the dense network")
        for c in ("mode", "k", "smallest matching density", "test accuracy", "levels measured"):
            tab.add_column(c, justify="left" if c == "mode" else "right")
        for r in res.winning_tickets.to_pylist():
            dens = r["smallest_matching_density"]
            tab.add_row(r["mode"], str(r["rewind_iter"]),
                        f"{100 * dens:.3g}%" if dens is not None else "none yet",
                        f"{100 * r['acc_mean']:.2f}%" if r["acc_mean"] is not None else MISSING,
                        f"{r['levels_measured']}/{r['levels_total']}")
        console.print(tab)


def analyze(store_root: str, experiment: str, out_dir: str | None = None, threshold: float = 0.02,
            wandb_mode: str = "disabled", console=None) -> int:
    """Write the tables, figures and HTML report of `experiment`; returns the exit code
    (0 ok, 2 bad input: unknown experiment, empty store, bad threshold or W&B mode)."""
    if console is None:
        from rich.console import Console

        console = Console()
    store = Store.open(store_root)
    problem = _check_args(store, experiment, threshold, wandb_mode)
    if problem:
        console.print(f"[red]error:[/red] {problem}")
        return 2

    clock = _Clock()
    # The scan cache lives with the store's reports, whatever --out says, so every later
    # analysis of this experiment (by anyone) reads only the newly written part files.
    cache = ScanCache(store, store.path("reports", experiment, ".cache"))
    raw = [read_table(store, "runs", experiment, RUNS_COLUMNS, cache),
           read_table(store, "instability", experiment, INSTABILITY_COLUMNS, cache),
           read_table(store, "interpolation", experiment, INTERPOLATION_COLUMNS, cache)]
    planned = plan_job_ids(store, experiment)  # the current plan's jobs only
    raw = [only_planned(raw[0], "job_id", planned), only_planned(raw[1], "pair_id", planned),
           only_planned(raw[2], "pair_id", planned)]
    clock.lap("read")
    res = compute(*raw, threshold, num_classes=read_num_classes(store, experiment))
    clock.lap("compute")
    progress = read_progress(store, experiment, res.n_train_runs, res.n_pairs)
    config = read_config_text(store, experiment)

    notes = []
    chk = res.barrier_check
    if chk["mismatches"]:
        notes.append(f"{chk['mismatches']} of {chk['pairs_checked']} stored barriers differ from "
                     f"the barrier recomputed from the interpolation path (max |diff| "
                     f"{chk['max_abs_diff']:.3g}).")
    if chk["only_in_interpolation"]:
        notes.append(f"{chk['only_in_interpolation']} (pair, split) barriers were recomputed from "
                     f"the interpolation table (no instability row yet).")
    if progress.note:
        notes.append(progress.note)
    notes += cache.warnings

    figures = {name: png for name, png in (
        ("instability_vs_rewind", figs.instability_vs_rewind(res.instability, threshold)),
        ("interpolation_path", figs.interpolation_paths(res.interpolation_path)),
        ("accuracy_vs_density", figs.accuracy_vs_density(res.accuracy, res.dense)),
    ) if png is not None}
    clock.lap("figures")

    if out_dir is None:
        out = _Out(store.fs, store.path("reports", experiment))
    else:
        out = _Out(pafs.LocalFileSystem(), os.path.abspath(out_dir))
    tables = res.tables()
    for stem, _title, t in tables:
        out.write_table(stem, t)
    for name, png in figures.items():
        out.write(f"{name}.png", png)
    summary = {
        "experiment": experiment, "threshold": threshold, "progress": progress.summary(),
        "jobs_planned": progress.planned, "jobs_done": progress.done,
        "train_runs": res.n_train_runs, "pairs": res.n_pairs,
        "dense_acc_mean": res.dense["mean"], "dense_acc_std": res.dense["std"],
        "barrier_check": chk, "rows_read": {"runs": raw[0].num_rows, "instability": raw[1].num_rows,
                                            "interpolation": raw[2].num_rows},
    }
    html = render(experiment, progress.summary(), notes, T.__doc__ or "", config, figures, tables)
    out.write("report.html", html.encode("utf-8"))
    clock.lap("write")
    summary["timings_s"] = clock.laps
    out.write("summary.json", json.dumps(summary, indent=2).encode())

    _print_key_table(console, res, threshold)
    console.print(f"Progress: {progress.summary()}")
    for n in notes:
        console.print(f"[yellow]note:[/yellow] {n}")
    console.print(f"Report: {out.file('report.html')}")

    if wandb_mode != "disabled":
        local = out.path if isinstance(out.fs, pafs.LocalFileSystem) else None
        if local is None:
            import tempfile

            local = tempfile.mkdtemp(prefix="lth-analysis-")
        from orchestrator.analysis.publish import log_to_wandb  # wandb is slow to import

        run_dir = log_to_wandb(wandb_mode, experiment, config, local, tables, figures, summary, console)
        console.print(f"W&B ({wandb_mode}): {run_dir}")
    return 0
