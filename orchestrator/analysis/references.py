"""Published results beside ours: the reference files an experiment names (kept in
STORE/experiments/NAME/references/ by `lth run`, or given to `lth analyze --references`), the
verdict table, and the points the figures draw.

Verdict of one published row against our cell of the same family, rewinding point and density:
- *not comparable* when the setting differs (another model, data set, granularity, number of
  training epochs or learning rate), when the experiment has no such family or no level at that density (within
  DENSITY_TOLERANCE), when the row gives a pruned network's channel fraction (our method table's
  density counts weights), or when our cell has fewer than two replicates (no interval);
- otherwise the difference ours - published with its 95% Welch t interval (stats.welch: our
  replicates' spread, and the published one where the paper gives a std over n runs; a
  published value without a spread adds none, so the interval is then ours alone: the paper's
  own run-to-run noise is unknown, which the reason says); *consistent* when that interval
  holds 0, *not consistent* otherwise.
A row from a secondary source (class S) keeps its verdict and says it is secondary.
"""
from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.fs as pafs

from orchestrator.analysis.stats import interval, welch

# Published densities are printed to three significant digits (<= 0.5% relative error) and our
# counts round up to a whole weight; no two levels of a sweep lie within 2% of each other
# (a level removes far more than 2% of the remaining weights), so 2% never picks the wrong level.
DENSITY_TOLERANCE = 0.02

CONSISTENT, NOT_CONSISTENT, NOT_COMPARABLE = "consistent", "not consistent", "not comparable"

SCHEMA = pa.schema([
    ("paper", pa.string()), ("where", pa.string()), ("setting", pa.string()), ("family", pa.string()),
    ("rewind_iter", pa.int64()), ("density_pct", pa.float64()), ("published_acc_pct", pa.float64()),
    ("published_acc_std_pct", pa.float64()), ("published_n", pa.int64()), ("our_density_pct", pa.float64()),
    ("our_acc_mean_pct", pa.float64()), ("our_acc_std_pct", pa.float64()), ("our_acc_ci_low_pct", pa.float64()),
    ("our_acc_ci_high_pct", pa.float64()), ("our_n", pa.int64()), ("difference_pp", pa.float64()),
    ("difference_ci_low_pp", pa.float64()), ("difference_ci_high_pp", pa.float64()),
    ("verdict", pa.string()), ("reason", pa.string()), ("secondary", pa.bool_()), ("source", pa.string()),
])


def stored_reference_texts(store, experiment: str) -> dict[str, str]:
    """{file name: YAML text} of the reference files `lth run` kept with the experiment."""
    d = store.path("experiments", experiment, "references")
    if store.fs.get_file_info(d).type != pafs.FileType.Directory:
        return {}
    out = {}
    for info in sorted(store.fs.get_file_info(pafs.FileSelector(d)), key=lambda i: i.base_name):
        if info.type == pafs.FileType.File and info.base_name.endswith((".yaml", ".yml")):
            out[info.base_name] = store.read_text(info.path)
    return out


def load_references(store, experiment: str, extra: list[str] = ()) -> list:
    """The experiment's reference files, validated (SpecError naming the file and field)."""
    from orchestrator.spec import SpecError, load_reference_file, parse_yaml, validate_reference

    out = []
    for name, text in stored_reference_texts(store, experiment).items():
        try:
            data = parse_yaml(text)
        except Exception as e:  # a YAML error in a stored copy: name the file
            raise SpecError(f"references/{name}", f"invalid YAML: {e}") from None
        out.append(validate_reference(data, f"{store.display}/experiments/{experiment}/references/{name}"))
    out += [load_reference_file(p) for p in extra]
    return out


def experiment_setting(store, experiment: str) -> dict:
    """model, dataset, epochs and granularity of the experiment's stored config (None when the
    store holds no config: every row is then not comparable)."""
    from orchestrator.spec import parse_yaml

    path = store.path("experiments", experiment, "spec.yaml")
    try:
        spec = parse_yaml(store.read_text(path)) or {}
    except (OSError, FileNotFoundError):
        return {}
    train, pruning = spec.get("train") or {}, spec.get("pruning") or {}
    return {"model": spec.get("model"), "dataset": (spec.get("data") or {}).get("name"),
            "epochs": _epochs(spec), "lr": (train.get("optimizer") or {}).get("lr"),
            "granularity": pruning.get("granularity") or "weight"}


def _epochs(spec: dict) -> float | None:
    """Training epochs of a stored (resolved) config: its iterations over the data set's
    iterations per epoch, ceil(N / B) as the config counts them (the resolved config keeps
    iterations only). None where the data set's size is unknown."""
    from orchestrator.spec import DataSpec
    from trainers.data.catalog import DESCRIPTIONS

    train = spec.get("train") or {}
    try:
        cfg = DataSpec.model_validate(spec.get("data") or {}).to_config()
        per_epoch = math.ceil(DESCRIPTIONS[cfg.name](cfg).num_train / int(train["batch_size"]))
        epochs = int(train["iterations"]) / per_epoch
    except Exception:  # noqa: BLE001 - an older or partial config: the epochs it states, if any
        return train.get("epochs")
    return int(epochs) if epochs == int(epochs) else round(epochs, 2)


def _acc(row) -> float:
    """The published value as an accuracy fraction."""
    return (100.0 - row.value if row.metric == "test_error" else row.value) / 100.0


def setting_difference(row, setting: dict) -> str | None:
    """Why a published row's setting is not the experiment's, or None."""
    if not setting:
        return "the store holds no config for this experiment (its model and data set are unknown)"
    for field, ours, label in (("model", setting.get("model"), "another model"),
                               ("dataset", setting.get("dataset"), "another data set"),
                               ("granularity", setting.get("granularity"), "another granularity")):
        theirs = getattr(row, field)
        if theirs != ours:
            return f"{label} (published: {theirs}; ours: {ours})"
    if row.epochs is not None and setting.get("epochs") is not None and row.epochs != setting["epochs"]:
        return f"another recipe (published: {row.epochs} epochs; ours: {setting['epochs']})"
    if row.lr is not None and setting.get("lr") is not None and not math.isclose(row.lr, setting["lr"]):
        return f"another recipe (published: learning rate {row.lr:g}; ours: {setting['lr']:g})"
    return None


def _cell(methods: pa.Table | None, row):
    """Our cell of the row's family and k at its density: (cell or None, reason or None)."""
    if methods is None or methods.num_rows == 0:
        return None, "no accuracy measured yet"
    rows = [r for r in methods.to_pylist() if r["family"] == row.family
            and (row.family == "dense" or r["rewind_iter"] == row.rewind_iter) and r["density"]]
    if not rows:
        k = "" if row.family == "dense" else f" at k = {row.rewind_iter}"
        return None, f"this experiment has no {row.family}{k}"
    if row.granularity == "channel" and row.density < 1 and "channel_density" not in methods.column_names:
        # methods.density counts the weights kept, also in a channel-pruned run: matched against a
        # published channel fraction it would pick an unrelated level (70% of the channels kept is
        # about half the weights), so such a row waits for a channel density to compare with.
        return None, (f"a channel density (published: {100 * row.density:.3g}% of the channels); our "
                      "method table counts the weights kept, not the channels")
    best = min(rows, key=lambda r: abs(math.log(r["density"] / row.density)))
    if abs(best["density"] / row.density - 1) > DENSITY_TOLERANCE:
        return None, (f"another density (published: {100 * row.density:.3g}%; nearest of ours: "
                      f"{100 * best['density']:.3g}%)")
    return best, None


def verdicts(refs: list, methods: pa.Table | None, setting: dict) -> pa.Table:
    """One row per published number (see the module docstring), in the files' order."""
    out = []
    for ref in refs:
        for row in ref.rows:
            pub = _acc(row)
            spread = None if row.spread is None else row.spread / 100.0
            rec = {"paper": ref.paper, "where": row.where, "setting": row.setting, "family": row.family,
                   "rewind_iter": row.rewind_iter, "density_pct": 100 * row.density,
                   "published_acc_pct": 100 * pub, "published_acc_std_pct": row.spread, "published_n": row.n,
                   "secondary": row.secondary, "source": row.source}
            reason = setting_difference(row, setting)
            cell = None
            if reason is None:
                cell, reason = _cell(methods, row)
            if cell is not None:
                lo, hi = interval(cell["acc_mean"], cell["acc_std"], cell["n_replicates"])
                rec.update({"our_density_pct": 100 * cell["density"], "our_acc_mean_pct": _p(cell["acc_mean"]),
                            "our_acc_std_pct": _p(cell["acc_std"]), "our_acc_ci_low_pct": _p(lo),
                            "our_acc_ci_high_pct": _p(hi), "our_n": cell["n_replicates"]})
                if cell["acc_mean"] is None:
                    reason = "not measured yet"
                elif (cell["n_replicates"] or 0) < 2:
                    reason = f"n = {cell['n_replicates']} here: one replicate has no interval"
            if reason is not None:
                rec.update(verdict=NOT_COMPARABLE, reason=reason)
            else:
                d, lo, hi = welch(cell["acc_mean"], cell["acc_std"], cell["n_replicates"], pub, spread, row.n)
                rec.update(difference_pp=100 * d, difference_ci_low_pp=_p(lo), difference_ci_high_pp=_p(hi))
                ok = lo is not None and lo <= 0 <= hi
                rec["verdict"] = CONSISTENT if ok else NOT_CONSISTENT
                basis = ("95% Welch t interval of the difference"
                         if spread is not None and (row.n or 0) >= 2 else
                         "95% t interval of our mean only: the published value has no spread"
                         + (" (one run)" if row.n == 1 else ""))
                rec["reason"] = (f"{'holds' if ok else 'excludes'} 0 ({basis})")
            if row.secondary:
                rec["reason"] += "; secondary source"
            out.append(rec)
    t = pa.Table.from_pylist(out, schema=SCHEMA)
    return _rounded(t)


def _p(v):
    return None if v is None else 100 * v


def _rounded(t: pa.Table) -> pa.Table:
    import pyarrow.compute as pc

    from orchestrator.analysis.present import DECIMALS

    cols = [pc.round(c, DECIMALS) if pa.types.is_floating(c.type) else c for c in t.columns]
    return pa.table(cols, schema=t.schema)


def overlay(refs: list, setting: dict) -> pa.Table:
    """The published points a figure can draw: rows of the experiment's model, data set and
    granularity (any density), as fractions. Columns: paper, family, rewind_iter, density, acc,
    std (null without one), secondary."""
    rows = [{"paper": ref.paper, "family": r.family, "rewind_iter": r.rewind_iter, "density": r.density,
             "acc": _acc(r), "std": None if r.spread is None else r.spread / 100.0, "secondary": r.secondary}
            for ref in refs for r in ref.rows
            if setting and all(getattr(r, f) == setting.get(f) for f in ("model", "dataset", "granularity"))]
    schema = pa.schema([("paper", pa.string()), ("family", pa.string()), ("rewind_iter", pa.int64()),
                        ("density", pa.float64()), ("acc", pa.float64()), ("std", pa.float64()),
                        ("secondary", pa.bool_())])
    return pa.Table.from_pylist(rows, schema=schema)
