"""`lth analyze`: a sweep's Parquet tables -> the tables, figures and report of the LTH papers.

Answers from the store alone, for a finished or a running sweep:
at which rewinding point does the network become stable, down to which density does the
ticket match the dense network, and how do the retrain modes compare at equal budget.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from orchestrator.analysis import curves
from orchestrator.analysis import methods as M
from orchestrator.analysis import tables as T
from orchestrator.analysis.figure_plan import FORMATS
from orchestrator.analysis.parts import UnreadablePart
from orchestrator.analysis.read import (
    LAYERS_COLUMNS, ScanCache, Store, known_experiments, only_planned, plan_job_ids, read_config_text,
    read_num_classes, read_progress, read_raw, read_table,
)
from orchestrator.analysis.present import MISSING, key_tables, present, print_key_tables
from orchestrator.analysis.report import render
from orchestrator.schemas import file_schema

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
    interpolation_path: pa.Table | None  # None until `add_path` (figures' input, not the summary's)
    barrier_check: dict
    n_train_runs: int
    n_pairs: int
    noise_floor: pa.Table | None = None  # sweep.branch.noise_floor: kernel noise's barrier
    pairs: pa.Table | None = None  # one row per (data-order pair, split): its barrier and mode
    methods: pa.Table | None = None  # every family's accuracy and weight correlation (methods.py)
    ablations: pa.Table | None = None  # pruning at init: each ablation against its method
    layer_profiles: pa.Table | None = None  # per-layer kept fractions (from the layers table)
    num_classes: int | None = None
    roles: tuple[str, ...] = ()  # the runs' roles ("pai": the experiment prunes at initialization)

    def add_path(self, interpolation: pa.Table) -> None:
        """The mean interpolation path, computed apart from the summary's tables because only
        the path figure and table need it (`lth analyze` prints the summary first)."""
        self.interpolation_path = T.path_summary(interpolation, self.pairs)

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
                       "acc_ci_low": pa.array([d.get("ci_low")], pa.float64()),
                       "acc_ci_high": pa.array([d.get("ci_high")], pa.float64()),
                       "n_replicates": pa.array([d["n"]], pa.int64())})),
        ]
        if self.retrain_comparison is not None:
            out.append(("retrain_comparison",
                        "Retrain modes and controls at equal total training iterations",
                        self.retrain_comparison))
        out.append(("interpolation_path", "Error along the interpolation path (mean over pairs)",
                    self.interpolation_path))
        if self.methods is not None and self.methods.num_rows:
            out.append(("methods", "Every family (IMP, controls, pruning at initialization and its ablations): "
                        "test accuracy and weight correlation by density", self.methods))
        if self.ablations is not None and self.ablations.num_rows:
            out.append(("ablations", "Ablations of pruning at initialization (Frankle et al. 2021): accuracy "
                        "change against the unablated method", self.ablations))
        if self.layer_profiles is not None and self.layer_profiles.num_rows:
            out.append(("layer_profiles", "Fraction of each layer's weights kept, by family and level",
                        self.layer_profiles))
        if self.noise_floor is not None:
            out.append(("noise_floor", "Noise floor: the barrier of kernel noise alone (same data seed, "
                        "non-deterministic kernels) beside the data-order barrier", self.noise_floor))
        return out


def compute(runs: pa.Table, instability: pa.Table, interpolation: pa.Table,
            threshold: float, num_classes: int | None = None, path: bool = True,
            layers: pa.Table | None = None) -> AnalysisResult:
    """The whole analysis from the three raw tables (file-free; tests call it directly).
    `num_classes` sets the chance error (None: no cell is called at chance). `path=False`
    leaves the interpolation path for a later `add_path`. `layers`: the layers table, for the
    per-layer density profiles."""
    runs_m = T.add_mode(runs)
    barriers, check = T.combine_barriers(instability, T.barriers_from_interpolation(interpolation),
                                         interpolation)
    barriers, noise = T.split_noise_pairs(T.add_pair_mode(barriers, runs_m), runs_m)
    sparse = runs_m.filter(pc.greater(runs_m["level"], 0))
    rewind_iters = sorted(set(sparse["rewind_iter"].drop_null().to_pylist())
                          | set(barriers["rewind_iter"].drop_null().to_pylist()))
    densities = T.level_densities(runs_m, barriers)
    summary = T.instability_summary(barriers, threshold, rewind_iters, densities, num_classes)
    dense = T.dense_accuracy(runs_m)
    acc = T.accuracy_summary(runs_m, dense)
    res = AnalysisResult(
        instability=summary,
        earliest_stable=T.stability_onset(summary),  # the onset of stability (tables.py)
        accuracy=acc,
        winning_tickets=T.winning_tickets(acc),
        dense=dense,
        retrain_comparison=T.retrain_comparison(T.add_training_budget(runs_m)),
        interpolation_path=None,
        barrier_check=check,
        n_train_runs=runs.num_rows,
        n_pairs=pc.count_distinct(barriers["pair_id"]).as_py() if barriers.num_rows else 0,
        noise_floor=T.noise_floor(barriers, noise),
        pairs=barriers,
    )
    runs_f = M.add_family(runs_m)
    res.methods = M.method_table(runs_f)
    res.ablations = M.ablation_table(res.methods)
    res.layer_profiles = M.layer_profiles(layers, runs_f) if layers is not None else None
    res.num_classes = num_classes
    res.roles = tuple(sorted(set(runs["role"].drop_null().to_pylist())))
    if path:
        res.add_path(interpolation)
    return res


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
        from orchestrator.suggest import did_you_mean

        return (f"unknown experiment {experiment!r} in store {store.display!r}{did_you_mean(experiment, known)}; "
                f"known experiments: {', '.join(known)}")
    return None


# What the figures look like is decided in these two files: a change to either redraws them.
FIGURE_CODE = hashlib.sha256(b"".join(Path(__file__).with_name(f).read_bytes()
                                      for f in ("figures.py", "figure_plan.py"))).hexdigest()[:16]


class _FigureCache:
    """Draw a figure only when what it shows changed: the key of each written figure (a hash
    of its input tables, its arguments, the formats and figures.py itself) is kept in
    OUT/.figures.json, and an unchanged figure is read back instead of drawn (drawing is most
    of an analysis's time once the scan cache makes reading cheap)."""

    NAME = ".figures.json"

    def __init__(self, out: "_Out", formats: tuple[str, ...], titles: bool = True, figsize: str | None = None):
        self.out, self.formats, self.titles, self.figsize = out, formats, titles, figsize
        try:
            with out.fs.open_input_stream(out.file(self.NAME)) as f:
                self.keys = json.loads(f.read().decode())
        except (OSError, ValueError):
            self.keys = {}
        self.drawn, self.reused = [], []
        self.seconds: dict[str, float] = {}

    @staticmethod
    def key(*inputs) -> str:
        h = hashlib.sha256(FIGURE_CODE.encode())
        for x in inputs:
            if isinstance(x, pa.Table):
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, x.schema) as w:
                    w.write_table(x)
                h.update(sink.getvalue().to_pybytes())
            else:
                h.update(json.dumps(x, sort_keys=True, default=str).encode())
        return h.hexdigest()

    def get(self, name: str, make, *inputs) -> dict[str, bytes] | None:
        """{format: bytes} of figure `name` (always with png), or None if nothing to draw."""
        key = self.key(name, sorted(self.formats), *inputs, *(() if self.titles else ("no titles",)),
                       *(() if self.figsize is None else (f"figsize {self.figsize}",)))
        if self.keys.get(name) == key:
            try:
                out = {}
                for fmt in self.formats:
                    with self.out.fs.open_input_stream(self.out.file(f"{name}.{fmt}")) as f:
                        out[fmt] = f.read()
                self.reused.append(name)
                return out
            except OSError:
                pass
        from orchestrator.analysis import figures as figs  # matplotlib: only when drawing

        t0 = time.perf_counter()
        fig = make()
        if fig is None:
            self.keys.pop(name, None)
            return None
        if not self.titles:
            figs.without_title(fig)
        if self.figsize is not None:
            figs.fit_to_paper(fig, self.figsize)
        try:
            out = {fmt: figs.encode(fig, fmt) for fmt in self.formats}
        finally:
            figs.close(fig)
        self.seconds[name] = round(time.perf_counter() - t0, 3)
        for fmt, data in out.items():
            self.out.write(f"{name}.{fmt}", data)
        self.keys[name] = key
        self.drawn.append(name)
        return out

    def save(self) -> None:
        self.out.write(self.NAME, json.dumps(self.keys, indent=1).encode())


def write_summary_exports(out: "_Out", key, dense_line: str | None, stem: str = "summary") -> None:
    """The summary tables as Markdown and LaTeX for a paper (summary.md, summary.tex)."""
    from orchestrator.analysis.export import latex, markdown

    notes = [dense_line + "."] if dense_line else []
    out.write(f"{stem}.md", markdown(key, notes).encode("utf-8"))
    out.write(f"{stem}.tex", latex(key, notes).encode("utf-8"))


def parse_formats(text: str) -> tuple[str, ...] | str:
    """'png,pdf' -> ('png', 'pdf'); png is always written (the HTML embeds it). A str: the error."""
    asked = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in asked if f not in FORMATS]
    if bad or not asked:
        return f"format: {', '.join(bad) or repr(text)} is not a figure format (use {', '.join(FORMATS)})"
    return tuple(dict.fromkeys(["png", *asked]))


def verdict_key_table(verdict: pa.Table):
    """The verdict as a summary table (console, report, summary.md/.tex)."""
    from orchestrator.analysis.present import KeyTable

    def pm(v, s, n):
        if v is None:
            return MISSING
        return f"{v:.2f}" + ("" if s is None else f" ± {s:.2f}") + ("" if n is None else f" (n = {n})")

    tab = KeyTable(title="Published results beside ours: test accuracy (%), mean ± std (n); "
                         "ours with its 95% t interval", columns=["paper", "family", "k", "density",
                                                                    "published", "ours [95% interval]",
                                                                    "verdict"], rows=[])
    for r in verdict.to_pylist():
        ours = MISSING
        if r["our_acc_mean_pct"] is not None:
            ci = ("" if r["our_acc_ci_low_pct"] is None
                  else f" [{r['our_acc_ci_low_pct']:.2f}, {r['our_acc_ci_high_pct']:.2f}]")
            ours = f"{r['our_acc_mean_pct']:.2f}{ci} (n = {r['our_n']})"
        tab.rows.append([r["paper"] + (" (secondary)" if r["secondary"] else ""), r["family"],
                         str(r["rewind_iter"]), f"{r['density_pct']:.3g}%",
                         pm(r["published_acc_pct"], r["published_acc_std_pct"], r["published_n"]), ours,
                         # the reason where it is the message; the basis of a verdict is in verdict.csv
                         f"{r['verdict']}: {r['reason']}" if r["verdict"] == "not comparable" else r["verdict"]])
    return tab


def _presented_tables(res: AnalysisResult, planned_levels: int | None) -> list[tuple[str, str, pa.Table]]:
    out = []
    for stem, title, t in res.tables():
        if stem == "winning_tickets" and planned_levels:
            # Counted against the plan's levels, not the levels seen so far.
            t = t.set_column(t.schema.get_field_index("levels_total"), "levels_total",
                             pa.array([planned_levels] * t.num_rows, pa.int64()))
        out.append((stem, title, present(t)))
    return out


def consoles(console=None):
    """(where the report's text goes, where errors go): stdout and stderr, or both to the console
    a caller passes (a test, a notebook)."""
    if console is not None:
        return console, console
    from rich.console import Console

    return Console(), Console(stderr=True)


def job_outcomes_line(store, experiment: str) -> str | None:
    """How many of the plan's jobs failed, diverged or are blocked below them (None: none)."""
    from orchestrator.progress import experiment_status

    try:
        st = experiment_status(store, experiment)
    except (FileNotFoundError, ValueError):  # no plan stored (rows written by hand, a test)
        return None
    if not (st.failed or st.diverged or st.blocked):
        return None
    return (f"{len(st.failed)} jobs failed, {len(st.diverged)} diverged (loss not finite: done, but "
            f"learned nothing), {len(st.blocked)} blocked below them; `lth status {experiment}` lists "
            "them with their reasons")


def collapse_line(store, experiment: str) -> str | None:
    """How many train jobs' masks disconnect the network (layer collapse), by family (None: none)."""
    runs = store.read_table("runs", experiment).select(["disconnected", "role", "retrain", "prune_strategy"]).to_pylist()
    cut = [r for r in runs if r["disconnected"]]
    if not cut:
        return None
    families = sorted({f"{r['role']} {r['prune_strategy']} {r['retrain']}" for r in cut})
    shown = ", ".join(families[:6]) + (f" and {len(families) - 6} more" if len(families) > 6 else "")
    return (f"{len(cut)} of {len(runs)} train jobs have a mask that disconnects the network (layer collapse: a "
            f"layer with no weight left, or no path from input to output), so their accuracy is chance whatever "
            f"training did: {shown}; runs.disconnected marks them")


def analyze(store_root: str, experiment: str, out_dir: str | None = None, threshold: float = 0.02,
            wandb_mode: str = "disabled", console=None, formats: tuple[str, ...] = ("png",),
            profile_level: int | None = None, titles: bool = True, references: tuple[str, ...] = (),
            figsize: str | None = None) -> int:
    """Write the tables, figures and HTML report of `experiment`; returns the exit code
    (0 ok, 2 bad input: unknown experiment, empty store, bad threshold or W&B mode).
    `profile_level`: the level whose per-layer densities the layer-profile figure draws (None:
    the deepest level measured).
    `references`: reference files (configs/references/*.yaml) besides those stored with the
    experiment: their published numbers are drawn on the figures and judged in verdict.csv.
    The summary is printed as soon as the tables are computed, before any figure is drawn.
    `titles=False` (`--no-titles`): figures without a title, for a paper's own captions.
    `figsize` (`--figsize column|page`): figures laid out at a paper's column (3.25 in) or page
    (6.75 in) width."""
    console, errors = consoles(console)
    store = Store.open(store_root)
    problem = _check_args(store, experiment, threshold, wandb_mode)
    if problem:
        errors.print(f"[red]error:[/red] {problem}")
        return 2

    from orchestrator.analysis import references as R
    from orchestrator.spec import SpecError

    try:  # a bad reference file is refused before anything is read or written
        refs = R.load_references(store, experiment, list(references))
    except SpecError as e:
        errors.print(f"[red]error:[/red] {e}", markup=False, highlight=False)
        return 2
    setting = R.experiment_setting(store, experiment)

    clock = _Clock()
    # The scan cache lives with the store's reports, whatever --out says, so every later
    # analysis of this experiment (by anyone) reads only the newly written part files.
    cache = ScanCache(store, store.path("reports", experiment, ".cache"), deferred=True)
    readers: dict[str, str] = {}

    def damaged(e: UnreadablePart) -> int:
        # every table (runs, instability, interpolation, layers, early_bird, metrics) is read
        # through read.read_table or parts.scan, which name a damaged part file; each read
        # happens before anything is written (the scan cache, the report)
        errors.print(f"[red]error:[/red] {e}; `lth run` rebuilds a damaged part's rows from the jobs' done records")
        return 2

    try:
        raw = read_raw(store, experiment, cache, readers)  # the current plan's jobs only
        planned = plan_job_ids(store, experiment)
        layers = only_planned(read_table(store, "layers", experiment, LAYERS_COLUMNS, cache), "job_id", planned)
        # the structured and early-bird sections: every column of their tables, uncached (the
        # cache holds the analysis's projection of `runs`)
        structured_input = {t: only_planned(read_table(store, t, experiment, file_schema(t).names), "job_id", planned)
                            for t in ("runs", "early_bird")}
    except UnreadablePart as e:
        return damaged(e)
    clock.lap("read")
    res = compute(*raw, threshold, num_classes=read_num_classes(store, experiment, cache), path=False,
                  layers=layers)
    clock.lap("compute")
    recorded = set(raw[0].column("job_id").to_pylist()) | set(raw[1].column("pair_id").to_pylist())
    progress = read_progress(store, experiment, res.n_train_runs, res.n_pairs, recorded)
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
    outcomes = job_outcomes_line(store.results, experiment)
    if outcomes:
        notes.append(outcomes)
    collapsed = collapse_line(store.results, experiment)
    if collapsed:
        notes.append(collapsed)

    key, dense_line = key_tables(res, threshold, progress.planned_levels,
                                 num_classes=read_num_classes(store, experiment, cache))
    verdict = R.verdicts(refs, res.methods, setting) if refs else None
    published = R.overlay(refs, setting) if refs else None
    if verdict is not None:
        key.append(verdict_key_table(verdict))
    print_key_tables(console, key, dense_line, branches_planned=progress.branches_planned())
    console.print(f"Progress: {progress.summary()}")
    for n in notes:
        console.print(f"[yellow]note:[/yellow] {n}")
    clock.lap("summary")
    chosen = curves.chosen_runs(T.add_mode(raw[0]))
    try:
        metrics = curves.read_metrics(store, experiment, chosen["job_id"].to_pylist())
    except UnreadablePart as e:
        return damaged(e)
    clock.lap("metrics")
    cache.flush()
    for w in cache.warnings:  # a read-only store: analyzed without a cache
        console.print(f"[yellow]note:[/yellow] {w}")
        notes.append(w)
    clock.lap("scan cache")
    res.add_path(raw[2])
    clock.lap("path")

    if out_dir is None:
        out = _Out(store.fs, store.path("reports", experiment))
    else:
        out = _Out(pafs.LocalFileSystem(), os.path.abspath(out_dir))
    tables = _presented_tables(res, progress.planned_levels)
    from orchestrator.analysis.structured import structured_tables

    from orchestrator.analysis.transfer import transfer_table

    raw_extra = structured_tables(store.results, structured_input["runs"], structured_input["early_bird"])
    moved = transfer_table(structured_input["runs"].to_pylist())
    if moved is not None:
        raw_extra.append(("transfer", "Ticket transfer: the source's tickets, their controls and this experiment's own IMP", moved))
    eb_dist = next((t for stem, _title, t in raw_extra if stem == "early_bird_distances"), None)
    extra = [(stem, title, present(t)) for stem, title, t in raw_extra]
    for stem, title, t in extra:
        console.print(f"{title}: {stem}.csv")
    tables += extra
    if verdict is not None:
        tables.append(("verdict", "Published results beside ours: the verdict per published number", verdict))
    for stem, _title, t in tables:
        out.write_table(stem, t)
    clock.lap("tables")

    fcache = _FigureCache(out, formats, titles, figsize)
    curve_table = curves.curves(chosen, metrics)
    from orchestrator.analysis import figures as figs  # matplotlib, after the summary is printed

    # every rewinding point of the experiment: k keeps one colour across the figures
    all_ks = sorted(set(res.accuracy["rewind_iter"].to_pylist()) | set(res.instability["rewind_iter"].to_pylist()))
    drawn = {}
    for name, make, inputs in (
        ("instability_vs_rewind", lambda: figs.instability_vs_rewind(res.instability, threshold),
         (res.instability, threshold)),
        ("interpolation_path", lambda: figs.interpolation_paths(res.interpolation_path, all_ks),
         (res.interpolation_path, all_ks)),
        ("accuracy_vs_density", lambda: figs.accuracy_vs_density(res.accuracy, res.dense, all_ks, published),
         (res.accuracy, res.dense, all_ks, published)),
        ("learning_curves", lambda: figs.learning_curves(curve_table), (curve_table,)),
        ("method_comparison", lambda: figs.method_comparison(res.methods, res.num_classes, published),
         (res.methods, res.num_classes, published)),
        ("layer_profiles", lambda: figs.layer_profiles(res.layer_profiles, profile_level),
         (res.layer_profiles, profile_level)),
        ("weight_correlation", lambda: figs.weight_correlation(res.methods), (res.methods,)),
        ("early_bird_distances", lambda: figs.early_bird_distances(eb_dist), (eb_dist,)),
        ("transfer_accuracy", lambda: figs.transfer_accuracy(moved, res.num_classes), (moved, res.num_classes)),
    ):
        got = fcache.get(name, make, *inputs)
        if got is not None:
            drawn[name] = got
    fcache.save()
    figures = {name: got["png"] for name, got in drawn.items()}
    figure_files = {name: [f"{name}.{fmt}" for fmt in got] for name, got in drawn.items()}
    clock.lap("figures")

    summary = {
        "experiment": experiment, "threshold": threshold, "progress": progress.summary(),
        "jobs_planned": progress.planned, "jobs_done": progress.done,
        "train_runs": res.n_train_runs, "pairs": res.n_pairs,
        "dense_acc_mean": res.dense["mean"], "dense_acc_std": res.dense["std"],
        "barrier_check": chk, "rows_read": {"runs": raw[0].num_rows, "instability": raw[1].num_rows,
                                            "interpolation": raw[2].num_rows,
                                            "metrics (learning curves)": curve_table.num_rows},
        "figures_drawn": fcache.drawn, "figures_unchanged": fcache.reused,
        "figure_seconds": fcache.seconds, "readers": readers,
    }
    html = render(experiment, progress.summary(), notes, key, dense_line, config, figures,
                  figure_files, tables)
    out.write("report.html", html.encode("utf-8"))
    write_summary_exports(out, key, dense_line)
    clock.lap("write")
    summary["timings_s"] = clock.laps
    out.write("summary.json", json.dumps(summary, indent=2).encode())
    console.print(f"Report: {out.file('report.html')}")

    if wandb_mode != "disabled":
        from orchestrator.tracking import wandb_parent_dir

        # beside the sweep's job runs (STORE/wandb, or $LTH_WANDB_DIR), so that one
        # `wandb sync STORE/wandb` uploads the analysis too
        local = wandb_parent_dir(None if store.results.is_remote else store.root)
        os.makedirs(local, exist_ok=True)
        from orchestrator.analysis.publish import log_to_wandb  # wandb is slow to import

        run_dir = log_to_wandb(wandb_mode, experiment, config, local, tables, figures, summary, console)
        console.print(f"W&B ({wandb_mode}): {run_dir}")
    return 0
