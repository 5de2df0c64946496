"""The Parquet rows of a finished job: a pure function of its plan entry and its done record.

Because rows come from the done record alone, a job finished by another experiment sharing
the store gets its rows in this experiment without running again.
"""
from __future__ import annotations

from typing import Any

from orchestrator.graph import Job
from orchestrator.store import Store


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
            "weights_path": res["weights_path"],
            "mask_path": res["mask_path"],
            "granularity": meta.granularity,
            "channel_density": res.get("channel_density"),
            "flops_fraction": res.get("flops_fraction"),
        }
        metrics = [
            {"job_id": job.id, "iteration": m["iteration"], "split": m["split"], "loss": m["loss"], "accuracy": m["accuracy"],
             "config_hash": meta.config_hash}
            for m in res["metrics"]
        ]
        tables = {"runs": [run], "metrics": metrics}
        if res.get("early_bird"):
            # staged before runs (dict order): a job whose runs row is stored has its detections too
            tables = {"early_bird": [{"job_id": job.id, **d, "config_hash": meta.config_hash} for d in res["early_bird"]],
                      **tables}
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
    return ("runs", "metrics") if kind == "train" else ("interpolation", "instability")


def write_job_rows(store: Store, experiment: str, job: Job, record: dict[str, Any],
                   stored: dict[str, set[str]]) -> None:
    """Stage the job's rows of each table that does not hold them yet (`stored`: table -> the
    jobs whose rows are staged or published, updated here). A job's rows are written once:
    a rerun (a dense run that gains a rewinding point, a job finished again after a crash
    before its done record) never writes them a second time."""
    for table, rows in job_rows(job, record).items():
        if job.id in stored[table]:
            continue
        store.stage_rows(table, experiment, rows, key=job.id)
        stored[table].add(job.id)
