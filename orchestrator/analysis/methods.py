"""Method comparison (Frankle et al., ICLR 2021; Liu et al., ICML 2021): every family of an
experiment on the same axes, as pure functions from pyarrow tables to pyarrow tables.

- family of a run: IMP's lineages are `imp_<retrain mode>` (imp_rewind, imp_lr_rewind,
  imp_finetune), the controls keep their config names (random_prune, random_reinit,
  random_reinit_signs), a pruning-at-initialization run is its method (snip, grasp, ...) and an
  ablation of it `<method>+<ablation>` (snip+shuffle, snip+reinit, snip+invert); the dense run
  (level 0) is `dense`. Branch children are left out (they are the instability analysis's).
- `methods`: per (family, k, level) the density, test accuracy and weight correlation (Pearson
  r of the starting and final weights over the kept weights), mean and sample std over
  replicates.
- `ablations`: per (method, ablation, k, level) the ablated accuracy minus the method's.
- `layer_profiles`: per (family, k, level, layer) the mean fraction of the layer's weights kept.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.analysis.stats import add_intervals, welch
from orchestrator.analysis.tables import DENSE, STD

ABLATIONS = ("shuffle", "reinit", "invert")
IMP_MODES = ("rewind", "lr_rewind", "finetune")


def add_family(runs_m: pa.Table) -> pa.Table:
    """`runs` with `mode` (tables.add_mode) plus `family`; branch and noise children dropped."""
    keep = pc.is_in(runs_m["role"], value_set=pa.array(["level", "pai"]))
    t = runs_m.filter(keep)
    fam = []
    for role, mode, retrain, strategy in zip(t["role"].to_pylist(), t["mode"].to_pylist(),
                                             t["retrain"].to_pylist(), t["prune_strategy"].to_pylist()):
        if role == "pai":
            ablation = (retrain or "rewind").removeprefix("pai_")
            fam.append(strategy if ablation == "rewind" else f"{strategy}+{ablation}")
        elif mode == DENSE:
            fam.append(DENSE)
        else:
            fam.append(f"imp_{mode}" if mode in IMP_MODES else mode)
    return t.append_column("family", pa.array(fam, pa.string()))


def method_table(runs_f: pa.Table) -> pa.Table:
    keys = ["family", "rewind_iter", "level"]
    if "weight_correlation" not in runs_f.column_names:
        runs_f = runs_f.append_column("weight_correlation", pa.nulls(runs_f.num_rows, pa.float64()))
    agg = runs_f.group_by(keys).aggregate([
        ("density", "mean"), ("test_accuracy", "mean"), ("test_accuracy", "stddev", STD),
        ("test_accuracy", "count"), ("weight_correlation", "mean"), ("weight_correlation", "stddev", STD),
    ]).rename_columns(keys + ["density", "acc_mean", "acc_std", "n_replicates", "weight_correlation_mean", "weight_correlation_std"])
    schema = pa.schema([("family", pa.string()), ("rewind_iter", pa.int64()), ("level", pa.int64()),
                        ("density", pa.float64()), ("acc_mean", pa.float64()), ("acc_std", pa.float64()),
                        ("n_replicates", pa.int64()), ("weight_correlation_mean", pa.float64()), ("weight_correlation_std", pa.float64())])
    out = agg.cast(schema)
    out = add_intervals(add_intervals(out, "acc", "n_replicates"), "weight_correlation", "n_replicates")
    return out.sort_by([("family", "ascending"), ("rewind_iter", "ascending"), ("level", "ascending")])


def ablation_table(methods: pa.Table) -> pa.Table:
    """Accuracy change of each ablation against its unablated method, per (k, level)."""
    cells = {(r["family"], r["rewind_iter"], r["level"]): r for r in methods.to_pylist()}
    rows = []
    for (fam, k, lv), r in sorted(cells.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        method, _, ablation = fam.partition("+")
        if ablation not in ABLATIONS:
            continue
        base = cells.get((method, k, lv))
        a, b = r["acc_mean"], base["acc_mean"] if base else None
        # Welch's interval of the difference (the ablated and unablated runs of a replicate share
        # its init, so a paired interval would be narrower; the table keeps only cell statistics)
        d, lo, hi = (None, None, None) if a is None or b is None else welch(
            a, r["acc_std"], r["n_replicates"], b, base["acc_std"], base["n_replicates"])
        rows.append({"method": method, "ablation": ablation, "rewind_iter": k, "level": lv,
                     "density": r["density"], "acc_method_mean": b, "acc_ablated_mean": a,
                     "delta_acc": d, "delta_acc_ci_low": lo, "delta_acc_ci_high": hi,
                     "n_replicates": r["n_replicates"]})
    schema = pa.schema([("method", pa.string()), ("ablation", pa.string()), ("rewind_iter", pa.int64()),
                        ("level", pa.int64()), ("density", pa.float64()), ("acc_method_mean", pa.float64()),
                        ("acc_ablated_mean", pa.float64()), ("delta_acc", pa.float64()),
                        ("delta_acc_ci_low", pa.float64()), ("delta_acc_ci_high", pa.float64()),
                        ("n_replicates", pa.int64())])
    return pa.Table.from_pylist(rows, schema=schema)


def layer_profiles(layers: pa.Table, runs_f: pa.Table) -> pa.Table:
    """Mean kept fraction per (family, k, level, layer); layers in the models' order."""
    schema = pa.schema([("family", pa.string()), ("rewind_iter", pa.int64()), ("level", pa.int64()),
                        ("layer_index", pa.int64()), ("layer", pa.string()), ("total", pa.int64()),
                        ("density", pa.float64()), ("weight_correlation_mean", pa.float64()), ("n_replicates", pa.int64())])
    if layers.num_rows == 0 or runs_f.num_rows == 0:
        return schema.empty_table()
    order: dict[str, int] = {}
    for name in layers["layer"].to_pylist():
        order.setdefault(name, len(order))
    info = {j: (f, k, lv) for j, f, k, lv in zip(runs_f["job_id"].to_pylist(), runs_f["family"].to_pylist(),
                                               runs_f["rewind_iter"].to_pylist(), runs_f["level"].to_pylist())}
    sums: dict[tuple, list] = {}
    for r in layers.to_pylist():
        key = info.get(r["job_id"])
        if key is None:
            continue
        cell = sums.setdefault((*key, r["layer"]), [0.0, 0, r["total"], 0.0, 0])
        cell[0] += r["kept"] / r["total"] if r["total"] else 0.0
        cell[1] += 1
        if r["weight_correlation"] is not None:
            cell[3] += r["weight_correlation"]
            cell[4] += 1
    rows = [{"family": f, "rewind_iter": k, "level": lv, "layer_index": order[name], "layer": name, "total": c[2],
             "density": c[0] / c[1], "weight_correlation_mean": c[3] / c[4] if c[4] else None, "n_replicates": c[1]}
            for (f, k, lv, name), c in sums.items()]
    out = pa.Table.from_pylist(rows, schema=schema)
    return out.sort_by([("family", "ascending"), ("rewind_iter", "ascending"), ("level", "ascending"),
                        ("layer_index", "ascending")])
