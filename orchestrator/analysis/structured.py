"""The report's structured-pruning and early-bird sections: tables computed from the `runs` and
`early_bird` tables (and the searches' eb_distances.json), empty when the experiment has none.

- `structured`: per family (rewind, the controls random_prune and random_reinit, ...) and level of
  the channel-granularity lineages: channel density, weight density, FLOPs fraction and test
  accuracy (mean over replicates and rewinding points). Liu et al. 2019's question is read off
  the rewind rows against the random_reinit rows at each level.
- `early_bird`: per fraction: the detection epoch and iteration (mean over searches), the
  density of the ticket, the retrained tickets' test accuracy per mode, the IMP lineage's
  (role level, rewind) accuracy at the level of nearest density, and the training cost of
  continue (the search, which stops when its last fraction fires, plus T - detection) as a fraction of IMP's cost to reach
  that level (the dense run plus (T - k) per level).
- `early_bird_distances`: the normalised Hamming distances between the per-epoch masks of the
  first search (the paper's figure, one row per epoch), per fraction.
"""
from __future__ import annotations

from collections import defaultdict
from statistics import mean, stdev

import pyarrow as pa

from orchestrator.analysis.stats import interval
from orchestrator.store import Store
from trainers.early_bird_files import DISTANCES_FILE


def _family(r: dict) -> str:
    if r["prune_strategy"] == "random":
        return "random_prune"
    return "random_reinit" if r["retrain"] == "reinit" else r["retrain"]


def structured_tables(store: Store, runs_table: pa.Table, eb_table: pa.Table) -> list[tuple[str, str, pa.Table]]:
    """The sections from the experiment's `runs` and `early_bird` rows (read by the caller, which
    reports a damaged part file before anything is written)."""
    runs = runs_table.to_pylist()
    out = []
    chan = [r for r in runs if r.get("granularity") == "channel" and r["role"] == "level"]
    if chan:
        cells = defaultdict(list)
        for r in chan:
            cells[(_family(r) if r["level"] else "dense", r["level"])].append(r)
        rows = []
        for (family, level), rs in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            acc = [r["test_accuracy"] for r in rs]
            cd = [r["channel_density"] for r in rs if r["channel_density"] is not None]
            ff = [r["flops_fraction"] for r in rs if r["flops_fraction"] is not None]
            # the sample std over replicates and its 95% t interval, as every other table
            sd = stdev(acc) if len(acc) > 1 else None
            lo, hi = interval(mean(acc), sd, len(acc))
            rows.append({"mode": family, "level": level, "channel_density": mean(cd) if cd else 1.0,
                         "weight_density": mean(r["density"] for r in rs), "flops_fraction": mean(ff) if ff else None,
                         "acc_mean": mean(acc), "acc_std": sd, "acc_ci_low": lo, "acc_ci_high": hi,
                         "n_replicates": len(rs)})
        out.append(("structured", "Structured pruning: accuracy, channel density and FLOPs by family and level",
                    pa.Table.from_pylist(rows)))
    eb = eb_table.to_pylist()
    if eb:
        out.append(_early_bird_table(runs, eb))
        dist = _distance_table(store, sorted({r["job_id"] for r in eb})[0])
        if dist is not None:
            out.append(dist)
    return out


def _early_bird_table(runs: list[dict], eb: list[dict]) -> tuple[str, str, pa.Table]:
    by_id = {r["job_id"]: r for r in runs}
    retrains = [r for r in runs if r["role"] == "early_bird" and r["retrain"] != "eb_search"]
    imp = [r for r in runs if r["role"] == "level" and r["retrain"] == "rewind" and r["prune_strategy"] != "random"]
    T = max((r["end_iter"] for r in runs), default=0)
    rows = []
    for p in sorted({d["fraction"] for d in eb}):
        ds = [d for d in eb if d["fraction"] == p]
        density = mean(d["density"] for d in ds)
        row = {"fraction": p, "detected": sum(d["detected"] for d in ds), "searches": len(ds),
               "detect_epoch": mean(d["detect_epoch"] for d in ds if d["detected"]) if any(d["detected"] for d in ds) else None,
               "detect_iter": mean(d["detect_iter"] for d in ds), "ticket_density": density}
        for mode in ("continue", "reinit", "rewind"):
            accs = [r["test_accuracy"] for r in retrains if r["retrain"] == f"eb_{mode}" and abs(r["density"] - density) < 1e-9]
            row[f"acc_eb_{mode}"] = mean(accs) if accs else None
        if imp:
            level = min({r["level"] for r in imp}, key=lambda lv: abs(mean(r["density"] for r in imp if r["level"] == lv) - density))
            at = [r for r in imp if r["level"] == level]
            row["imp_level"] = level
            row["imp_density"] = mean(r["density"] for r in at)
            row["acc_imp"] = mean(r["test_accuracy"] for r in at)
        search_stop = [by_id[d["job_id"]]["end_iter"] for d in ds if d["job_id"] in by_id]
        row["search_iters"] = mean(search_stop) if search_stop else None
        if imp and search_stop:
            imp_cost = T + sum(T - r["start_iter"] for r in at) / len(at) * level
            eb_cost = mean(search_stop) + mean(T - d["detect_iter"] for d in ds)
            row["eb_continue_cost_vs_imp"] = eb_cost / imp_cost
        rows.append(row)
    return ("early_bird", "Early-bird tickets: detection, retrained accuracy against IMP at the nearest density, cost",
            pa.Table.from_pylist(rows))


def _distance_table(store: Store, search_id: str) -> tuple[str, str, pa.Table] | None:
    rel = Store.artifact(search_id, DISTANCES_FILE)
    if not store.exists(rel):
        return None
    matrices = store.read_json(rel)
    rows = []
    for p, m in matrices.items():
        for e, line in enumerate(m):
            rows.append({"fraction": float(p), "epoch": e, **{f"vs_epoch_{j}": v for j, v in enumerate(line)}})
    return ("early_bird_distances", f"Early-bird mask distances between epochs (search {search_id})",
            pa.Table.from_pylist(rows))
