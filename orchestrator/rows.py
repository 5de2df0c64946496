"""The Parquet rows of a finished job: a pure function of its plan entry and its done record.

Because rows come from the done record alone, a job finished by another experiment sharing
the store gets its rows in this experiment without running again.

A job's rows describe its artifacts, always (DESIGN.md "The store"). A job can finish more than
once (redone because its output was damaged, finished again after the driver died before its done
record, a dense run that gains a rewinding point): its staged rows are then replaced (no reader
has seen them), and its published rows, which are never rewritten, must be the rows of the new
record; when they are not, the job is refused (`RowsDisagree`) rather than done with rows that
describe other artifacts.
"""
from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from orchestrator.failures import divergence
from orchestrator.graph import Job
from orchestrator.schemas import file_schema
from orchestrator.store import Store

# Where, when and how often a job ran, and under which config of its experiment (one that grew
# since has another hash), not what it produced: a job finished again may differ in these.
PROVENANCE = ("wall_seconds", "attempts", "host", "node", "config_hash")


class RowsDisagree(RuntimeError):
    """A job finished again, and its new results differ from the rows already published for it."""


def job_rows(job: Job, record: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """{table: rows} for one job (tables per DESIGN.md; `experiment` is the partition)."""
    meta = job.meta
    if meta is None:
        raise ValueError(f"job {job.id} has no metadata: the planner must set Job.meta")
    res = record["result"]
    if job.kind == "train":
        run = {
            "job_id": job.id,
            "parent_job_id": meta.parent_job_id,
            "role": meta.role,
            "replicate": meta.replicate,
            "rewind_iter": meta.rewind_iter,
            "level": meta.level,
            "data_seed": meta.data_seed,
            "retrain": meta.retrain,
            "prune_strategy": meta.prune_strategy,
            "density": res["density"],
            "start_iter": res["start_iter"],
            "end_iter": res["end_iter"],
            "test_loss": res["test_loss"],
            "test_accuracy": res["test_accuracy"],
            "train_loss": res["train_loss"],
            "train_accuracy": res["train_accuracy"],
            "wall_seconds": record["wall_seconds"],
            "attempts": record["attempts"],
            "host": record["host"],
            "node": record["node"],
            "device": record["device"],
            "world_size": record.get("world_size", 1),
            "config_hash": meta.config_hash,
            "deterministic": res.get("deterministic"),
            "diverged": divergence(res) is not None,
            "weights_path": res["weights_path"],
            "mask_path": res["mask_path"],
            "weight_correlation": res.get("weight_correlation"),
            "granularity": meta.granularity,
            "channel_density": res.get("channel_density"),
            "flops_fraction": res.get("flops_fraction"),
            "disconnected": res.get("disconnected"),
            "ticket_source": meta.ticket_source,
            "ticket_source_data": meta.ticket_source_data,
            "ticket_source_optimizer": meta.ticket_source_optimizer,
        }
        metrics = [
            {"job_id": job.id, "iteration": m["iteration"], "split": m["split"], "loss": m["loss"], "accuracy": m["accuracy"],
             "config_hash": meta.config_hash}
            for m in res["metrics"]
        ]
        layers = [
            {"job_id": job.id, "layer": r["layer"], "kept": r["kept"], "total": r["total"],
             "weight_correlation": r["weight_correlation"], "config_hash": meta.config_hash}
            for r in res.get("layers", [])
        ]
        tables = {}
        if res.get("early_bird"):  # staged before runs (dict order): a recorded job has its detections too
            tables["early_bird"] = [{"job_id": job.id, **d, "config_hash": meta.config_hash} for d in res["early_bird"]]
        tables.update(layers=layers, metrics=metrics, runs=[run])  # runs last: see result_tables
        return tables
    if job.kind == "interpolate":
        if meta.pair is None:
            raise ValueError(f"interpolate job {job.id} has no pair in its metadata")
        common = {
            "pair_id": job.id,
            "job_a": meta.pair[0],
            "job_b": meta.pair[1],
            "replicate": meta.replicate,
            "rewind_iter": meta.rewind_iter,
            "level": meta.level,
            "density": meta.density,
            "config_hash": meta.config_hash,
        }
        interpolation = [
            {**common, "split": r["split"], "alpha": r["alpha"], "loss": r["loss"], "error": r["error"]}
            for r in res["rows"]
        ]
        instability = [
            {
                **common,
                "split": r["split"],
                "error_a": r["error_a"],
                "error_b": r["error_b"],
                "max_error": r["max_error"],
                "barrier": r["barrier"],
            }
            for r in res["instability"]
        ]
        return {"interpolation": interpolation, "instability": instability}
    raise ValueError(f"job {job.id}: unknown kind {job.kind!r}")


def result_tables(kind: str) -> tuple[str, ...]:
    """The tables a finished job of `kind` must have rows in before it counts as recorded. A train
    job's `layers` rows are staged before its `runs` row (job_rows' order), so a recorded job has
    them, except a job finished before the table existed, which has none to give."""
    return ("runs", "metrics") if kind == "train" else ("interpolation", "instability")


def tables_of(kind: str) -> tuple[str, ...]:
    """Every table a finished job of `kind` can have rows in (job_rows' keys, at most)."""
    return ("runs", "metrics", "layers", "early_bird") if kind == "train" else ("interpolation", "instability")


def write_job_rows(store: Store, experiment: str, job: Job, record: dict[str, Any],
                   stored: dict[str, set[str]]) -> None:
    """Stage the job's rows of each table (`stored`: table -> the jobs whose rows are staged or
    published, updated here). A job whose rows are stored already gets its staged rows replaced,
    and its published rows checked: RowsDisagree, before anything is written, when they are not
    the rows of `record` (see the module docstring)."""
    tables = job_rows(job, record)
    differ = {}
    for table, rows in tables.items():
        if job.id in stored[table] and not store.is_staged(table, experiment, job.id):
            differ[table] = _differences(table, store.published_rows(table, experiment, job.id), rows)
    differ = {t: d for t, d in differ.items() if d}
    if differ:
        raise RowsDisagree(
            f"job {job.id} finished again with results that differ from its published rows "
            f"(experiment {experiment}: " + "; ".join(f"table {t}: {d}" for t, d in sorted(differ.items()))
            + "); published rows are never rewritten, so it is refused: run the sweep under a new "
            "experiment name (--set name=...) to keep these results"
        )
    staged = {}
    for table, rows in tables.items():
        if job.id in stored[table] and not store.is_staged(table, experiment, job.id):
            continue  # published, and equal to these
        if not rows and table not in result_tables(job.kind):
            continue  # (a table a job of this kind may leave empty: layers of a pre-layers record)
        staged[table] = rows
    # the tables a recorded job must have (result_tables) last: a crash between the two leaves a
    # job that does not count as recorded, whose rows are then all written again
    first = {t: rows for t, rows in staged.items() if t not in result_tables(job.kind)}
    store.stage_job_rows(experiment, first, key=job.id)
    store.stage_job_rows(experiment, {t: rows for t, rows in staged.items() if t not in first}, key=job.id)
    for table in staged:
        stored[table].add(job.id)


def _differences(table: str, published: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    """'' when the published rows are `rows` (but for PROVENANCE, and for columns a published row
    does not have: null, written before the column existed); else what differs, briefly."""
    schema = file_schema(table)
    new = pa.Table.from_pylist(rows, schema=schema).to_pylist()  # the values as the file stores them

    def canonical(row: dict[str, Any], keep: set[str]) -> str:
        return json.dumps({k: row.get(k) for k in sorted(keep)}, sort_keys=True, default=str)

    if len(published) != len(new):
        return f"{len(published)} rows published, {len(new)} now"
    columns = set(schema.names) - set(PROVENANCE)
    unknown = {c for c in columns if published and all(r.get(c) is None for r in published)}
    keep = columns - unknown
    old_rows = sorted(canonical(r, keep) for r in published)
    new_rows = sorted(canonical(r, keep) for r in new)
    if old_rows == new_rows:
        return ""
    changed = sorted({k for a, b in zip(old_rows, new_rows)
                      for k, v in json.loads(a).items() if json.loads(b).get(k) != v})
    return f"columns {', '.join(changed)} differ"
