"""Learning curves from the `metrics` table: accuracy against iteration for the dense network
and a few pruning levels of the primary lineage mode, at every rewinding point k.

Only the chosen jobs' rows are read (a filtered scan of the experiment's live part files), so
the cost does not grow with the whole table; figures are drawn after the summary is printed.
"""
from __future__ import annotations

import contextlib

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.analysis.figure_plan import pick as _pick, primary_mode
from orchestrator.analysis.parts import scan
from orchestrator.analysis.read import Store
from orchestrator.schemas import file_schema

MAX_LEVELS = 4  # sparse levels drawn besides the dense network
SCHEMA = pa.schema([("level", pa.int64()), ("density", pa.float64()), ("rewind_iter", pa.int64()),
                    ("split", pa.string()), ("iteration", pa.int64()), ("acc_mean", pa.float64()),
                    ("acc_std", pa.float64()), ("n_replicates", pa.int64())])


def chosen_runs(runs_m: pa.Table) -> pa.Table:
    """The dense runs, and the primary mode's runs at every rewinding point for up to
    MAX_LEVELS evenly spaced levels (job_id, level, density, rewind_iter)."""
    lv = runs_m.filter(pc.equal(runs_m["role"], "level"))
    dense = lv.filter(pc.equal(lv["level"], 0))
    sparse = lv.filter(pc.greater(lv["level"], 0))
    mode = primary_mode(sorted(set(sparse["mode"].to_pylist())))
    cols = ["job_id", "level", "density", "rewind_iter"]
    if mode is None:
        return dense.select(cols)
    sparse = sparse.filter(pc.equal(sparse["mode"], mode))
    levels = _pick(sorted(set(sparse["level"].to_pylist())), MAX_LEVELS)
    sparse = sparse.filter(pc.is_in(sparse["level"], pa.array(levels, pa.int64())))
    return pa.concat_tables([dense.select(cols), sparse.select(cols)])


def read_metrics(store: Store, experiment: str, job_ids: list[str]) -> pa.Table:
    columns = ["job_id", "iteration", "split", "accuracy"]
    for _ in range(3):  # a file deleted between listing and scan (a store edited by hand)
        parts = [i.path for i in store.results.partition_listing("metrics", experiment)]
        if not parts or not job_ids:
            break
        with contextlib.suppress(FileNotFoundError):
            return scan(store.fs, not store.results.is_remote, "metrics", parts, columns,
                        where=("job_id", job_ids)).table
    return file_schema("metrics").empty_table().select(columns)


def curves(chosen: pa.Table, metrics: pa.Table) -> pa.Table:
    """Mean and sample std of accuracy over replicates per (rewinding point, level, split,
    iteration); the dense runs are level 0 at k = 0."""
    if chosen.num_rows == 0 or metrics.num_rows == 0:
        return SCHEMA.empty_table()
    t = metrics.join(chosen, keys="job_id", join_type="inner")
    keys = ["rewind_iter", "level", "split", "iteration"]
    agg = t.group_by(keys).aggregate([
        ("density", "mean"), ("accuracy", "mean"),
        ("accuracy", "stddev", pc.VarianceOptions(ddof=1)), ("accuracy", "count")])
    agg = agg.rename_columns(keys + ["density", "acc_mean", "acc_std", "n_replicates"])
    return agg.select(SCHEMA.names).cast(SCHEMA).sort_by([(k, "ascending") for k in keys])
