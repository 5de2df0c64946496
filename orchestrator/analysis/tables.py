"""The analysis rules, as pure functions from pyarrow tables to pyarrow tables.

Definitions (the ones the report states):
- lineage mode: `random_prune` when prune_strategy is "random", `random_reinit` when retrain is
  "reinit", `random_reinit_signs` when it is "reinit_signs", else the retrain mode (rewind | lr_rewind | finetune); the level-0 lineage run
  (role "level") is `dense`.
- barrier of a pair on a split: max over alpha of error(alpha) - (error(0) + error(1)) / 2.
- a (mode, level, rewind point, split) cell is *stable* when its mean barrier over replicates
  and pairs is below the threshold (0.02 = 2 percentage points, Frankle et al. 2020);
  a pair is stable when its own barrier is below it.
- a cell is *at chance* when the mean error of its endpoints is within the threshold of the
  chance error 1 - 1/C (C classes): networks that learned nothing have no barrier to measure,
  so such a cell is never stable.
- onset of stability (DESIGN.md): the smallest measured k from which every larger measured k
  is stable; none when the largest measured k is not stable. A sweep stable at k = 0, unstable
  at 100 and stable from 500 has its onset at 500, not 0. `complete` is false while some k of
  the sweep's grid has no measurement yet (a later one could still break the run of stable
  points, an earlier one extend it).
- dense standard deviation: the sample standard deviation of the dense networks' test
  accuracy over replicates. Replicates differ only in their init seed (a sweep trains every
  lineage with one data-order seed, sweep.data_seed), so it measures the spread due to the
  initialisation alone, not due to data order.
- a sparse network *matches* the dense one when its mean test accuracy is at least the dense
  mean minus one dense standard deviation (with one dense replicate, it is taken as 0). The winning ticket of a (mode, k) is the smallest
  matching density.
- training budget of a run: the sum of (end_iter - start_iter) over it and all its ancestors
  (parent_job_id chain down to the dense run): dense T, plus (T - k) per pruning level for
  every retrain mode. Modes are compared at equal budget.
Missing cells are null (never 0): every table is completed over the grid of the values the
experiment has shown so far, with count 0 and null statistics where nothing is measured.
"""
from __future__ import annotations

import itertools

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.analysis.stats import add_intervals, interval

DENSE = "dense"
STD = pc.VarianceOptions(ddof=1)  # sample std over replicates/pairs; null for a single value


def add_mode(runs: pa.Table) -> pa.Table:
    """`runs` plus a `mode` column (see the module docstring)."""
    retrain = pc.fill_null(runs["retrain"], "rewind")
    mode = pc.if_else(pc.equal(pc.fill_null(runs["prune_strategy"], ""), "random"),
                      pa.scalar("random_prune"),
                      pc.if_else(pc.equal(retrain, "reinit"), pa.scalar("random_reinit"),
                                 pc.if_else(pc.equal(retrain, "reinit_signs"), pa.scalar("random_reinit_signs"), retrain)))
    # Only the lineage's own level-0 run is the dense network; a level-0 branch child (a
    # restart from W_k) keeps its lineage's mode so its pairs are counted with that lineage.
    is_dense = pc.and_(pc.equal(runs["level"], 0), pc.equal(runs["role"], "level"))
    mode = pc.if_else(is_dense, pa.scalar(DENSE), mode)
    return runs.append_column("mode", mode.cast(pa.string()))


# A pair's own columns: the same on its instability rows and on every point of its path.
PAIR_COLUMNS = ["job_a", "job_b", "replicate", "rewind_iter", "level", "density"]


def barriers_from_interpolation(interp: pa.Table) -> pa.Table:
    """One row per (pair_id, split) from the raw interpolation path: max_error, error_a,
    error_b, barrier."""
    keys = ["pair_id", "split"]
    # The pair's own columns (job_a, level, ...) are not aggregated here: combine_barriers looks
    # them up for the few pairs that need them (aggregating them would double the cost).
    agg = interp.group_by(keys).aggregate([("error", "max")]).rename_columns(keys + ["max_error"])
    for alpha, name in ((0.0, "error_a"), (1.0, "error_b")):
        end = interp.filter(pc.equal(interp["alpha"], alpha)).select(keys + ["error"])
        end = end.group_by(keys).aggregate([("error", "mean")]).rename_columns(keys + [name])
        agg = agg.join(end, keys=keys, join_type="left outer")
    barrier = pc.subtract(agg["max_error"],
                          pc.divide(pc.add(agg["error_a"], agg["error_b"]), 2.0))
    return agg.append_column("barrier", barrier)


def combine_barriers(instability: pa.Table, recomputed: pa.Table, interp: pa.Table) -> tuple[pa.Table, dict]:
    """The stored instability rows, plus rows recomputed from the path (`interp`, whose barriers
    are `recomputed`) for pairs only the interpolation table has; and a consistency check of
    the stored barriers against the recomputed ones."""
    keys = ["pair_id", "split"]
    cols = ["pair_id", "job_a", "job_b", "replicate", "rewind_iter", "level", "density", "split",
            "error_a", "error_b", "max_error", "barrier"]
    both = instability.select(keys + ["barrier"]).join(
        recomputed.select(keys + ["barrier"]).rename_columns(keys + ["re"]), keys=keys,
        join_type="inner")
    diff = pc.abs(pc.subtract(both["barrier"], both["re"]))
    check = {
        "pairs_checked": both.num_rows,
        "max_abs_diff": pc.max(diff).as_py() if both.num_rows else None,
        "mismatches": int(pc.sum(pc.greater(diff, 1e-6)).as_py() or 0) if both.num_rows else 0,
    }
    extra = recomputed.join(instability.select(keys), keys=keys, join_type="left anti")
    check["only_in_interpolation"] = extra.num_rows
    schema = instability.select(cols).schema
    if extra.num_rows:
        # The pair's columns from its first path point (every point of a pair holds the same).
        first = pc.index_in(extra["pair_id"], value_set=interp["pair_id"])
        for c in PAIR_COLUMNS:
            extra = extra.append_column(c, pc.take(interp[c], first))
        extra = extra.select(cols).cast(schema)
    else:
        extra = schema.empty_table()
    return pa.concat_tables([instability.select(cols), extra]), check


def add_pair_mode(barriers: pa.Table, runs_m: pa.Table) -> pa.Table:
    """Each pair's lineage mode, from its children's runs rows (a dense child defers to the
    other child; pairs whose children are both unknown or dense count as `rewind`)."""
    lookup = runs_m.select(["job_id", "mode"])
    out = barriers
    for side in ("a", "b"):
        out = out.join(lookup.rename_columns([f"job_{side}", f"mode_{side}"]),
                       keys=f"job_{side}", join_type="left outer")
    def usable(col):
        return pc.and_(pc.is_valid(col), pc.not_equal(pc.fill_null(col, DENSE), DENSE))
    mode = pc.if_else(usable(out["mode_a"]), out["mode_a"],
                      pc.if_else(usable(out["mode_b"]), out["mode_b"], pa.scalar("rewind")))
    return out.drop_columns(["mode_a", "mode_b"]).append_column("mode", mode)


def split_noise_pairs(barriers: pa.Table, runs: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(data-order pairs, noise-floor pairs): a noise-floor pair's children have role "noise"
    (sweep.branch.noise_floor); it measures kernel noise, not instability, so it is kept out of
    every instability statistic."""
    noise_ids = runs.filter(pc.equal(runs["role"], "noise"))["job_id"]
    is_noise = pc.fill_null(pc.is_in(barriers["job_a"], value_set=noise_ids), False)
    return barriers.filter(pc.invert(is_noise)), barriers.filter(is_noise)


def noise_floor(barriers: pa.Table, noise: pa.Table) -> pa.Table | None:
    """The barrier kernel noise alone produces beside the data-order barrier, per branch point
    (rewind_iter, level) and split; None when the experiment has no noise-floor pairs."""
    if noise.num_rows == 0:
        return None
    keys = ["rewind_iter", "level", "split"]
    agg = noise.group_by(keys).aggregate([("barrier", "mean"), ("barrier", "max"), ("pair_id", "count")])
    agg = agg.rename_columns(keys + ["noise_barrier_mean", "noise_barrier_max", "noise_pairs"])
    data = barriers.group_by(keys).aggregate([("barrier", "mean"), ("pair_id", "count")])
    data = data.rename_columns(keys + ["data_order_barrier_mean", "data_order_pairs"])
    return agg.join(data, keys=keys, join_type="left outer").sort_by([(k, "ascending") for k in keys])


def level_densities(*tables: pa.Table) -> dict[int, float]:
    """level -> density as observed (pruning is deterministic: one density per level)."""
    out: dict[int, float] = {}
    for t in tables:
        if t.num_rows == 0:
            continue
        g = t.group_by("level").aggregate([("density", "mean")])
        for lv, d in zip(g["level"].to_pylist(), g["density_mean"].to_pylist()):
            if lv is not None and d is not None:
                out.setdefault(lv, d)
    return out


def _complete(agg: pa.Table, keys: list[str], grid: list[tuple], schema: pa.Schema,
              count_cols: tuple[str, ...]) -> pa.Table:
    """`agg` completed with a null row (counts 0) for every grid key it lacks."""
    have = set(zip(*(agg[k].to_pylist() for k in keys))) if agg.num_rows else set()
    missing = [g for g in grid if g not in have]
    if missing:
        cols = {k: [m[i] for m in missing] for i, k in enumerate(keys)}
        for f in schema:
            if f.name not in cols:
                cols[f.name] = [0] * len(missing) if f.name in count_cols else [None] * len(missing)
        agg = pa.concat_tables([agg.select(schema.names).cast(schema),
                                pa.table(cols, schema=schema)])
    return agg.select(schema.names).cast(schema)


def instability_summary(barriers: pa.Table, threshold: float, rewind_iters: list[int],
                        densities: dict[int, float], num_classes: int | None = None) -> pa.Table:
    """Barrier statistics per (mode, level, rewind_iter, split) over replicates and pairs.
    `num_classes` (None: unknown) defines the chance error that marks a cell `at_chance`."""
    keys = ["mode", "level", "rewind_iter", "split"]
    b = barriers.filter(pc.is_valid(barriers["barrier"]))
    b = b.append_column("is_stable", pc.less(b["barrier"], threshold).cast(pa.float64()))
    b = b.append_column("end_error", pc.divide(pc.add(b["error_a"], b["error_b"]), 2.0))
    agg = b.group_by(keys).aggregate([
        ("density", "mean"), ("barrier", "mean"), ("barrier", "stddev", STD),
        ("barrier", "count"), ("replicate", "count_distinct"), ("is_stable", "mean"),
        ("end_error", "mean"),
    ]).rename_columns(keys + ["density", "barrier_mean", "barrier_std", "n_pairs",
                              "n_replicates", "frac_stable", "end_error_mean"])
    schema = pa.schema([("mode", pa.string()), ("level", pa.int64()), ("density", pa.float64()),
                        ("rewind_iter", pa.int64()), ("split", pa.string()),
                        ("barrier_mean", pa.float64()), ("barrier_std", pa.float64()),
                        ("n_pairs", pa.int64()), ("n_replicates", pa.int64()),
                        ("frac_stable", pa.float64()), ("end_error_mean", pa.float64())])
    # Grid: per mode, the levels it branched at x every rewind point x every split seen.
    splits = sorted(set(b["split"].to_pylist()))
    grid = []
    for mode in sorted(set(b["mode"].to_pylist())):
        levels = sorted(set(b.filter(pc.equal(b["mode"], mode))["level"].to_pylist()))
        grid += [(mode, lv, k, s) for lv, k, s in itertools.product(levels, rewind_iters, splits)]
    out = _complete(agg, keys, grid, schema, ("n_pairs", "n_replicates"))
    densities = {**densities, **level_densities(b)}
    density = [d if d is not None else densities.get(lv)
               for d, lv in zip(out["density"].to_pylist(), out["level"].to_pylist())]
    out = out.set_column(2, "density", pa.array(density, pa.float64()))
    if num_classes:
        at_chance = pc.greater_equal(out["end_error_mean"], (1.0 - 1.0 / num_classes) - threshold)
    else:
        at_chance = pc.if_else(pc.is_valid(out["end_error_mean"]), False, pa.scalar(None, pa.bool_()))
    out = out.append_column("at_chance", at_chance)
    stable = pc.and_(pc.less(out["barrier_mean"], threshold), pc.invert(at_chance))
    out = out.append_column("stable", stable)
    out = _replicate_interval(out, b, keys)
    return out.sort_by([("mode", "ascending"), ("split", "ascending"), ("level", "ascending"),
                        ("rewind_iter", "ascending")])


def _replicate_interval(out: pa.Table, b: pa.Table, keys: list[str]) -> pa.Table:
    """`out` with barrier_ci_low/high: the 95% t interval over the replicates' mean barriers.
    Not over pairs: the pairs of one replicate share their parent network, so they are not
    independent draws, and an interval over them would be too narrow."""
    per_rep = b.group_by(keys + ["replicate"]).aggregate([("barrier", "mean")])
    reps = per_rep.group_by(keys).aggregate([("barrier_mean", "mean"), ("barrier_mean", "stddev", STD),
                                             ("barrier_mean", "count")])
    cell = {tuple(r[k] for k in keys): interval(r["barrier_mean_mean"], r["barrier_mean_stddev"],
                                                r["barrier_mean_count"])
            for r in reps.to_pylist()}
    got = [cell.get(tuple(r), (None, None)) for r in zip(*(out[k].to_pylist() for k in keys))]
    at = out.schema.get_field_index("barrier_std") + 1
    out = out.add_column(at, "barrier_ci_low", pa.array([g[0] for g in got], pa.float64()))
    return out.add_column(at + 1, "barrier_ci_high", pa.array([g[1] for g in got], pa.float64()))


def stability_onset(summary: pa.Table) -> pa.Table:
    """Per (mode, level, density, split): the onset of stability (see the module doc)."""
    rows: dict[tuple, list[tuple[int, bool | None]]] = {}
    density: dict[tuple, float | None] = {}
    for r in summary.select(["mode", "level", "density", "split", "rewind_iter", "stable"]).to_pylist():
        key = (r["mode"], r["level"], r["split"])
        rows.setdefault(key, []).append((r["rewind_iter"], r["stable"]))
        if density.get(key) is None:
            density[key] = r["density"]
    out = []
    for (mode, level, split), cells in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        measured = sorted((k, s) for k, s in cells if s is not None)
        onset = None
        for k, stable in reversed(measured):  # walk down from the largest k while stable
            if not stable:
                break
            onset = k
        out.append({"mode": mode, "level": level, "density": density[(mode, level, split)],
                    "split": split, "onset_iter": onset, "complete": len(measured) == len(cells),
                    "rewind_iters_measured": len(measured), "rewind_iters_total": len(cells)})
    schema = pa.schema([("mode", pa.string()), ("level", pa.int64()), ("density", pa.float64()),
                        ("split", pa.string()), ("onset_iter", pa.int64()),
                        ("complete", pa.bool_()), ("rewind_iters_measured", pa.int64()),
                        ("rewind_iters_total", pa.int64())])
    return pa.Table.from_pylist(out, schema=schema)


def level_runs(runs_m: pa.Table) -> pa.Table:
    """The lineage levels (branch children are for instability only)."""
    return runs_m.filter(pc.equal(runs_m["role"], "level"))


def dense_accuracy(runs_m: pa.Table) -> dict:
    """Mean, sample std and count of test accuracy of the dense runs (level 0)."""
    dense = level_runs(runs_m)
    dense = dense.filter(pc.equal(dense["level"], 0))
    acc = dense["test_accuracy"].drop_null()
    n = len(acc)
    mean = pc.mean(acc).as_py() if n else None
    std = pc.stddev(acc, ddof=1).as_py() if n > 1 else None
    low, high = interval(mean, std, n)
    return {"mean": mean, "std": std, "n": n, "ci_low": low, "ci_high": high}


def accuracy_summary(runs_m: pa.Table, dense: dict) -> pa.Table:
    """Test accuracy per (mode, rewind_iter, level >= 1) and whether it matches the dense net."""
    keys = ["mode", "rewind_iter", "level"]
    lv = level_runs(runs_m)
    lv = lv.filter(pc.greater(lv["level"], 0))
    agg = lv.group_by(keys).aggregate([
        ("density", "mean"), ("test_accuracy", "mean"), ("test_accuracy", "stddev", STD),
        ("test_accuracy", "count"),
    ]).rename_columns(keys + ["density", "acc_mean", "acc_std", "n_replicates"])
    schema = pa.schema([("mode", pa.string()), ("rewind_iter", pa.int64()), ("level", pa.int64()),
                        ("density", pa.float64()), ("acc_mean", pa.float64()),
                        ("acc_std", pa.float64()), ("n_replicates", pa.int64())])
    levels = sorted(set(lv["level"].to_pylist()))
    grid = []
    for mode in sorted(set(lv["mode"].to_pylist())):
        ks = sorted(set(lv.filter(pc.equal(lv["mode"], mode))["rewind_iter"].to_pylist()))
        grid += [(mode, k, l) for k, l in itertools.product(ks, levels)]
    out = _complete(agg, keys, grid, schema, ("n_replicates",))
    densities = level_densities(lv)
    out = out.set_column(3, "density", pa.array(
        [d if d is not None else densities.get(l)
         for d, l in zip(out["density"].to_pylist(), out["level"].to_pylist())], pa.float64()))
    if dense["mean"] is None:
        matches = pa.nulls(out.num_rows, pa.bool_())
    else:
        bar = dense["mean"] - (dense["std"] or 0.0)
        matches = pc.greater_equal(out["acc_mean"], bar)
    out = out.append_column("matches_dense", matches)
    out = add_intervals(out, "acc", "n_replicates")
    return out.sort_by([("mode", "ascending"), ("rewind_iter", "ascending"), ("level", "ascending")])


def winning_tickets(acc: pa.Table) -> pa.Table:
    """Per (mode, rewind_iter): the smallest density that matches the dense network."""
    groups: dict[tuple, list[dict]] = {}
    for r in acc.to_pylist():
        groups.setdefault((r["mode"], r["rewind_iter"]), []).append(r)
    out = []
    for (mode, k), rows in sorted(groups.items()):
        matching = [r for r in rows if r["matches_dense"]]
        best = min(matching, key=lambda r: r["density"]) if matching else None
        measured = [r for r in rows if r["n_replicates"] > 0]
        sparsest = min(measured, key=lambda r: r["density"]) if measured else None
        out.append({"mode": mode, "rewind_iter": k,
                    "smallest_matching_density": best["density"] if best else None,
                    "level": best["level"] if best else None,
                    "acc_mean": best["acc_mean"] if best else None,
                    "levels_measured": len(measured),
                    "levels_total": len(rows),
                    # the ticket is the sparsest level measured: a sparser one may match too
                    "sparsest_measured": (best["level"] == sparsest["level"]) if best else None})
    schema = pa.schema([("mode", pa.string()), ("rewind_iter", pa.int64()),
                        ("smallest_matching_density", pa.float64()), ("level", pa.int64()),
                        ("acc_mean", pa.float64()), ("levels_measured", pa.int64()),
                        ("levels_total", pa.int64()), ("sparsest_measured", pa.bool_())])
    return pa.Table.from_pylist(out, schema=schema)


def add_training_budget(runs_m: pa.Table) -> pa.Table:
    """`runs` plus `train_iters`: (end_iter - start_iter) summed over the parent chain.
    Null when an ancestor is not in the table."""
    ids = runs_m["job_id"].to_pylist()
    parent = dict(zip(ids, runs_m["parent_job_id"].to_pylist()))
    own = dict(zip(ids, (None if s is None or e is None else e - s for s, e in
                         zip(runs_m["start_iter"].to_pylist(), runs_m["end_iter"].to_pylist()))))
    memo: dict[str, int | None] = {}

    def budget(jid: str) -> int | None:
        chain, cur = [], jid
        while cur and cur not in memo:  # "" or None: the chain reached the dense run
            if cur not in own:  # an ancestor without a row: budget unknown
                memo[cur] = None
                break
            chain.append(cur)
            cur = parent[cur]
        base = memo[cur] if cur else 0
        for j in reversed(chain):
            base = None if base is None or own[j] is None else base + own[j]
            memo[j] = base
        return memo[jid]

    return runs_m.append_column("train_iters", pa.array([budget(j) for j in ids], pa.int64()))


def retrain_comparison(runs_b: pa.Table) -> pa.Table | None:
    """Wide table: per (rewind_iter, level, train_iters), each mode's mean/std/count of test
    accuracy; None when the sweep has fewer than two modes."""
    lv = level_runs(runs_b)
    lv = lv.filter(pc.greater(lv["level"], 0))
    modes = sorted(set(lv["mode"].to_pylist()))
    if len(modes) < 2:
        return None
    keys = ["rewind_iter", "level", "train_iters"]
    agg = lv.group_by(keys + ["mode"]).aggregate([
        ("density", "mean"), ("test_accuracy", "mean"), ("test_accuracy", "stddev", STD),
        ("test_accuracy", "count")])
    cells: dict[tuple, dict] = {}
    for r in agg.to_pylist():
        row = cells.setdefault(tuple(r[k] for k in keys), {"density": r["density_mean"]})
        row[r["mode"]] = (r["test_accuracy_mean"], r["test_accuracy_stddev"], r["test_accuracy_count"])
    fields = [("rewind_iter", pa.int64()), ("level", pa.int64()), ("train_iters", pa.int64()),
              ("density", pa.float64())]
    for m in modes:
        fields += [(f"{m}_mean", pa.float64()), (f"{m}_std", pa.float64()), (f"{m}_ci_low", pa.float64()),
                   (f"{m}_ci_high", pa.float64()), (f"{m}_n", pa.int64())]
    rows = []
    for key in sorted(cells, key=lambda t: tuple(-1 if v is None else v for v in t)):
        row = dict(zip(keys, key), density=cells[key]["density"])
        for m in modes:
            mean, std, n = cells[key].get(m, (None, None, 0))
            low, high = interval(mean, std, n)
            row.update({f"{m}_mean": mean, f"{m}_std": std, f"{m}_ci_low": low, f"{m}_ci_high": high, f"{m}_n": n})
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


def path_summary(interp: pa.Table, pair_modes: pa.Table) -> pa.Table:
    """Mean/std of the error along the path per (mode, rewind_iter, level, split, alpha)."""
    modes = pair_modes.select(["pair_id", "mode"]).group_by("pair_id").aggregate([("mode", "min")])
    modes = modes.combine_chunks()
    t = interp.select(["pair_id", "rewind_iter", "level", "density", "split", "alpha", "error"])
    # A lookup of each path point's pair, not a hash join: the path has a million points.
    mode = pc.take(modes["mode_min"], pc.index_in(t["pair_id"], value_set=modes["pair_id"]))
    t = t.append_column("mode", pc.fill_null(mode, "rewind"))
    keys = ["mode", "rewind_iter", "level", "split", "alpha"]
    agg = t.group_by(keys).aggregate([("density", "mean"), ("error", "mean"),
                                      ("error", "stddev", STD), ("error", "count")])
    agg = agg.rename_columns(keys + ["density", "error_mean", "error_std", "n_pairs"])
    return agg.sort_by([(k, "ascending") for k in keys])
