"""Wall time of `lth analyze` (orchestrator.analysis.analyze).

    python benchmarks/bench_analyze.py                       # synthetic store: 10M metrics rows,
                                                             # ~1M interpolation rows, many files
    python benchmarks/bench_analyze.py --files 20000         # more, smaller files
    python benchmarks/bench_analyze.py --files 100           # as a long `lth run` leaves it
    python benchmarks/bench_analyze.py --store S --experiment demo   # an existing store (demo)

The synthetic store is written in a temporary directory (kept with --keep DIR) the way the
store lays it out: results/<table>/experiment=<name>/part-*.parquet, rows spread evenly over
--files files per large table (the driver of `lth run` publishes one file per table every
PUBLISH_EVERY_SECONDS (orchestrator/scheduler.py) and at its end, so a sweep of about three
hours leaves about 100). Generation is vectorized (numpy + pyarrow). The first --cold runs
are cold (no scan cache: the first also pays the first call of every kernel), the next --warm
ones warm (see orchestrator/analysis/read.py ScanCache); the median ratio of each kind is
printed. It fails unless analyze's instability table equals DuckDB's and a local store's
cold runs were read by DuckDB (orchestrator/analysis/parts.py), not a fallback.
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from orchestrator.schemas import file_schema  # noqa: E402
from orchestrator.store import Store  # noqa: E402

EXP = "bench"
T_ITERS = 4000
KS = [0, 100, 500, 1000, 2000]
MODES = ["rewind", "lr_rewind", "finetune"]
CONFIG_HASH = "0" * 16  # one config: every row of the synthetic experiment was written under it


def _strings(prefix: str, idx: np.ndarray, n_unique: int) -> pa.Array:
    """`prefix<i>` strings for integer indices, without a Python string per row."""
    dictionary = pa.array([f"{prefix}{i:07d}" for i in range(n_unique)])
    return pa.DictionaryArray.from_arrays(pa.array(idx.astype(np.int32)), dictionary).cast(pa.string())


def _constant(value: str, n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value])).cast(pa.string())


def _write(root: Path, table: str, t: pa.Table, files: int) -> int:
    d = root / "results" / table / f"experiment={EXP}"
    d.mkdir(parents=True, exist_ok=True)
    files = max(1, min(files, t.num_rows))
    step = math.ceil(t.num_rows / files)
    n = 0
    for i, off in enumerate(range(0, t.num_rows, step)):
        pq.write_table(t.slice(off, step), d / f"part-{i:06d}.parquet")
        n += 1
    return n


def generate(root: Path, metrics_rows: int, interp_rows: int, files: int, replicates: int,
             levels: int, seed: int = 0) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    density = 0.8 ** np.arange(levels + 1)
    # runs: dense per replicate, then every (mode, k, level) lineage level
    rep, k, lv, mode = [], [], [], []
    for r in range(replicates):
        rep.append(r), k.append(0), lv.append(0), mode.append("rewind")
        for m, kk, l in itertools.product(MODES, KS, range(1, levels + 1)):
            rep.append(r), k.append(kk), lv.append(l), mode.append(m)
    rep, k, lv = np.array(rep), np.array(k), np.array(lv)
    n_runs = len(rep)
    ids = np.arange(n_runs)
    # parent: previous level of the same lineage (rows are in level order), dense for level 1
    dense_row = np.searchsorted(rep, rep)  # the dense run is the first row of each replicate
    parent = np.where(lv == 1, dense_row, np.maximum(ids - 1, 0))
    parent_id = pc.if_else(pa.array(lv == 0), pa.scalar(None, pa.string()),
                           _strings("job", parent, n_runs))
    runs = pa.table({
        "job_id": _strings("job", ids, n_runs),
        "parent_job_id": parent_id,
        "role": pa.array(["level"] * n_runs), "replicate": rep, "rewind_iter": k, "level": lv,
        "data_seed": np.zeros(n_runs, np.int64), "retrain": pa.array(mode),
        "prune_strategy": pa.array(["magnitude_global"] * n_runs), "density": density[lv],
        "start_iter": np.where(lv == 0, 0, k), "end_iter": np.full(n_runs, T_ITERS),
        "test_loss": rng.random(n_runs), "test_accuracy": 0.92 - 0.002 * lv + rng.normal(0, 0.003, n_runs),
        "train_loss": rng.random(n_runs), "train_accuracy": rng.random(n_runs),
        "wall_seconds": rng.random(n_runs) * 100, "attempts": np.ones(n_runs, np.int64),
        "host": pa.array(["host"] * n_runs), "node": pa.array(["node"] * n_runs),
        "device": pa.array(["cuda:0"] * n_runs), "deterministic": np.ones(n_runs, bool),
        "config_hash": pa.array([CONFIG_HASH] * n_runs), "weights_path": pa.array(["w"] * n_runs),
        "mask_path": pa.array(["m"] * n_runs),
    }, schema=file_schema("runs"))

    # interpolation: pairs over (replicate, k, level) cells, 2 splits x 31 alphas each
    alphas = np.linspace(0, 1, 31)
    cells = replicates * len(KS) * (levels + 1)
    pairs_per_cell = max(1, round(interp_rows / (cells * 2 * len(alphas))))
    n_pairs = cells * pairs_per_cell
    p = np.arange(n_pairs)
    cell = p // pairs_per_cell
    p_rep = cell // (len(KS) * (levels + 1))
    p_k = np.array(KS)[(cell // (levels + 1)) % len(KS)]
    p_lv = cell % (levels + 1)
    pp = np.repeat(p, 2 * len(alphas))  # row -> pair
    split_idx = np.tile(np.repeat([0, 1], len(alphas)), n_pairs)
    alpha = np.tile(alphas, 2 * n_pairs)
    bump = (0.08 / (1 + p_k / 100) * (1 + p_lv / levels))[pp]
    error = 0.08 + bump * np.sin(np.pi * alpha) + rng.uniform(0, 0.01, len(pp))
    split = pa.DictionaryArray.from_arrays(pa.array(split_idx.astype(np.int32)),
                                           pa.array(["test", "train"])).cast(pa.string())
    interp = pa.table({
        "pair_id": _strings("pair", pp, n_pairs), "job_a": _strings("a", pp, n_pairs),
        "job_b": _strings("b", pp, n_pairs), "replicate": p_rep[pp], "rewind_iter": p_k[pp],
        "level": p_lv[pp], "density": density[p_lv][pp], "split": split, "alpha": alpha,
        "loss": error * 3, "error": error, "config_hash": _constant(CONFIG_HASH, len(pp)),
    }, schema=file_schema("interpolation"))
    # instability: one row per (pair, split), from the same path
    err2 = error.reshape(n_pairs * 2, len(alphas))
    q = np.arange(n_pairs * 2)
    qp = q // 2
    inst = pa.table({
        "pair_id": _strings("pair", qp, n_pairs), "job_a": _strings("a", qp, n_pairs),
        "job_b": _strings("b", qp, n_pairs), "replicate": p_rep[qp], "rewind_iter": p_k[qp],
        "level": p_lv[qp], "density": density[p_lv][qp],
        "split": pa.array(np.where(q % 2 == 0, "test", "train")),
        "error_a": err2[:, 0], "error_b": err2[:, -1], "max_error": err2.max(1),
        "barrier": err2.max(1) - (err2[:, 0] + err2[:, -1]) / 2,
        "config_hash": _constant(CONFIG_HASH, len(q)),
    }, schema=file_schema("instability"))

    # metrics: evaluations of every run (never read by the analysis, but it is in the store)
    jm = rng.integers(0, n_runs, metrics_rows)
    metrics = pa.table({
        "job_id": _strings("job", np.sort(jm), n_runs),
        "iteration": rng.integers(0, T_ITERS, metrics_rows),
        "split": pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, 2, metrics_rows).astype(np.int32)),
                                                pa.array(["test", "train"])).cast(pa.string()),
        "loss": rng.random(metrics_rows), "accuracy": rng.random(metrics_rows),
        "config_hash": _constant(CONFIG_HASH, metrics_rows),
    }, schema=file_schema("metrics"))

    return {
        "runs_rows": runs.num_rows, "runs_files": _write(root, "runs", runs, files),
        "interpolation_rows": interp.num_rows,
        "interpolation_files": _write(root, "interpolation", interp, files),
        "instability_rows": inst.num_rows, "instability_files": _write(root, "instability", inst, files),
        "metrics_rows": metrics.num_rows, "metrics_files": _write(root, "metrics", metrics, files),
    }


DUCKDB_SQL = """
WITH inst AS (SELECT * FROM read_parquet($inst)),
interp AS (SELECT pair_id, split, max(error) AS max_error,
                  avg(error) FILTER (WHERE alpha = 0) AS error_a, avg(error) FILTER (WHERE alpha = 1) AS error_b
           FROM read_parquet($interp) GROUP BY pair_id, split),
runs AS (SELECT job_id, CASE WHEN prune_strategy = 'random' THEN 'random_prune'
                             WHEN retrain = 'reinit' THEN 'random_reinit'
                             ELSE coalesce(retrain, 'rewind') END AS mode
         FROM read_parquet($runs))
SELECT coalesce(r.mode, 'rewind') AS mode, i.level, i.rewind_iter, i.split,
       avg(i.density) AS density, avg(i.barrier) AS barrier_mean, stddev_samp(i.barrier) AS barrier_std,
       count(*) AS n_pairs, avg(CASE WHEN i.barrier < 0.02 THEN 1.0 ELSE 0.0 END) AS frac_stable,
       max(abs(i.barrier - (p.max_error - (p.error_a + p.error_b) / 2))) AS max_recomputed_diff
FROM inst i JOIN interp p USING (pair_id, split) LEFT JOIN runs r ON r.job_id = i.job_a
GROUP BY ALL ORDER BY ALL
"""


def duckdb_baseline(store: str, experiment: str) -> tuple[float, list[dict]]:
    """A plain DuckDB query over the same live part files: the instability table, with every
    stored barrier cross-checked against the one its interpolation path gives."""
    import duckdb

    s = Store(store)
    files = {t: [s.path(i.path) if "://" in store else i.path for i in s.partition_listing(t, experiment)]
             for t in ("instability", "interpolation", "runs")}
    t0 = time.perf_counter()
    con = duckdb.connect()
    rows = con.execute(DUCKDB_SQL, {"inst": files["instability"], "interp": files["interpolation"],
                                    "runs": files["runs"]}).fetchall()
    cols = [d[0] for d in con.description]
    con.close()
    return time.perf_counter() - t0, [dict(zip(cols, r)) for r in rows]


def check_against(out: str, baseline: list[dict]) -> None:
    """analyze's instability table equals DuckDB's (analyze writes percentage points rounded
    to 6 decimals: 5e-7 pp, plus float error of summing in another order)."""
    got = {(r["mode"], r["level"], r["rewind_iter"], r["split"]): r
           for r in pq.read_table(Path(out, "instability.parquet")).to_pylist() if r["n_pairs"]}
    assert len(got) == len(baseline), (len(got), len(baseline))
    for b in baseline:
        r = got[(b["mode"], b["level"], b["rewind_iter"], b["split"])]
        assert r["n_pairs"] == b["n_pairs"]
        assert abs(r["barrier_mean_pp"] - 100 * b["barrier_mean"]) <= 5e-7 + 1e-9
        assert abs(r["barrier_std_pp"] - 100 * b["barrier_std"]) <= 5e-7 + 1e-9
        assert b["max_recomputed_diff"] <= 1e-12


def time_analyze(store: str, experiment: str, cold: int, warm: int) -> list[tuple[str, float, float, float]]:
    """`cold` runs without a scan cache (every part file is read; the cache is deleted before
    each), then `warm` runs (the cache holds every part: only the listing and the cached copy
    are read). Each run is preceded by the DuckDB baseline on the same files, in this process,
    so each ratio compares two measurements taken under the same load. Returns
    (cold|warm, analyze seconds, seconds until the summary was printed, DuckDB seconds)."""
    from rich.console import Console

    from orchestrator.analysis import analyze

    times = []
    for i in range(cold + warm):
        kind = "cold" if i < cold else "warm"
        t_duck, baseline = duckdb_baseline(store, experiment)
        if kind == "cold" and "://" not in store:
            shutil.rmtree(Path(store, "reports", experiment, ".cache"), ignore_errors=True)
        out = tempfile.mkdtemp(prefix="lth-bench-out-")
        t0 = time.perf_counter()
        rc = analyze(store, experiment, out_dir=out, console=Console(file=io.StringIO()))
        total = time.perf_counter() - t0
        if rc != 0:
            raise SystemExit(f"analyze returned {rc}")
        stages = json.loads(Path(out, "summary.json").read_text())
        laps = stages["timings_s"]
        tables = laps["read"] + laps["compute"] + laps["summary"]
        check_against(out, baseline)
        # The path this benchmark exists to time: a local store's part files read by DuckDB
        # (cold), or only the scan cache (warm). A fallback to pyarrow fails it.
        want = {"duckdb"} if kind == "cold" else {"scan cache"}
        if "://" not in store and set(stages["readers"].values()) != want:
            raise SystemExit(f"{kind} analyze read {stages['readers']}, not {want}: the timed path fell back")
        times.append((kind, total, tables, t_duck))
        print(f"  {kind}: analyze {total:.2f}s (summary printed after {tables:.2f}s: "
              + ", ".join(f"{k} {v:.2f}s" for k, v in laps.items())
              + f"); DuckDB {t_duck:.2f}s; tables/DuckDB {tables / t_duck:.2f}x; "
              f"identical instability table; readers {stages['readers']}; rows read: {stages['rows_read']}")
        shutil.rmtree(out)
    return times


def _report(times) -> None:
    print(f"CPU ({os.cpu_count()} cpus): " + "; ".join(
        f"{k}: tables {tab:.2f}s vs DuckDB {duck:.2f}s = {tab / duck:.2f}x, whole analyze {tot:.2f}s"
        for k, tot, tab, duck in times))
    for kind in ("cold", "warm"):
        ratios = sorted(tab / duck for k, _, tab, duck in times if k == kind)
        if ratios:
            print(f"{kind}: tables/DuckDB median {statistics.median(ratios):.2f}x over {len(ratios)} runs "
                  f"(min {ratios[0]:.2f}x, max {ratios[-1]:.2f}x)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", help="time an existing store instead of generating one")
    ap.add_argument("--experiment", default=EXP)
    ap.add_argument("--metrics-rows", type=int, default=10_000_000)
    ap.add_argument("--interp-rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=2000, help="part files per table (at most one per row)")
    ap.add_argument("--replicates", type=int, default=8)
    ap.add_argument("--levels", type=int, default=15)
    ap.add_argument("--cold", type=int, default=3, help="runs without the scan cache")
    ap.add_argument("--warm", type=int, default=2, help="runs with the scan cache")
    ap.add_argument("--keep", help="write the synthetic store here and keep it")
    args = ap.parse_args(argv)

    if args.store:
        times = time_analyze(args.store, args.experiment, args.cold, args.warm)
        _report(times)
        return 0
    root = Path(args.keep or tempfile.mkdtemp(prefix="lth-bench-store-"))
    try:
        t0 = time.perf_counter()
        sizes = generate(root, args.metrics_rows, args.interp_rows, args.files, args.replicates,
                         args.levels)
        gen = time.perf_counter() - t0
        n_files = sum(1 for _ in root.rglob("*.parquet"))
        print(f"store {root}: generated in {gen:.1f}s, {n_files} files, "
              + ", ".join(f"{k}={v}" for k, v in sizes.items()))
        times = time_analyze(str(root), EXP, args.cold, args.warm)
        _report(times)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
