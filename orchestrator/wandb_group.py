"""The experiment's W&B group made complete: one `experiment` run per experiment that lists every
job of the plan with its results, jobs reused from another experiment included.

A job is done once, by whichever experiment first planned it (equal work, equal id), and its
W&B run (learning curves, the interpolation path) is logged then, in that experiment's group. A
fork that reuses every job (`--set name=demo_lr05` with the demo's own learning rate) runs nothing
and would leave its group empty. So after `lth run`, the driver logs a run named
`experiment-NAME` (job_type `experiment`) in the group NAME: a table `jobs` with one row per
planned job (its W&B run name, role, replicate, k, level, seed, density, test accuracy or test
barrier, whether this `lth run` ran it) and the summary counts. It is logged again only when the
set of done jobs changed since the last one (STORE/experiments/NAME/wandb.json), so a rerun with
nothing to do stays fast. The newest `experiment-NAME` run of a group is the complete one.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

from orchestrator.tracking import TrackingSettings, init_run, run_name

COLUMNS = ["job_id", "kind", "run_name", "role", "replicate", "rewind_iter", "level", "data_seed",
           "density", "done", "ran_by_this_lth_run", "test_accuracy_pct", "test_barrier_pp"]


def job_rows(plan, done: set[str], ran: set[str], runs: list[dict], instability: list[dict]) -> list[list[Any]]:
    """One row per planned job, in COLUMNS' order; results from the experiment's own tables
    (whose rows exist for reused jobs too: the scheduler writes them from the done records)."""
    acc = {r["job_id"]: r["test_accuracy"] for r in runs}
    barrier = {r["pair_id"]: r["barrier"] for r in instability if r["split"] == "test"}
    rows = []
    for job_id, job in plan.jobs.items():
        m = job.meta
        a, b = acc.get(job_id), barrier.get(job_id)
        rows.append([
            job_id, job.kind, run_name(job), m.role if m else None, m.replicate if m else None,
            m.rewind_iter if m else None, m.level if m else None, m.data_seed if m else None,
            m.density if m else None, job_id in done, job_id in ran,
            None if a is None else 100.0 * a, None if b is None else 100.0 * b,
        ])
    return rows


def hyperparameters(store, experiment: str) -> dict[str, Any]:
    """The experiment's resolved config as `lth run` stored it (STORE/experiments/NAME/spec.yaml),
    without its name and the sections that say where and how jobs run, not what they compute:
    so that W&B can filter and compare experiment runs by model, data, training and pruning."""
    import yaml

    from orchestrator.experiment import RUNTIME_SECTIONS

    try:
        config = yaml.safe_load(store.read_bytes(f"experiments/{experiment}/spec.yaml")) or {}
    except (OSError, yaml.YAMLError):
        return {}  # tracking never fails a sweep: the run still has the experiment and its config hash
    return {k: v for k, v in config.items() if k != "name" and k not in RUNTIME_SECTIONS}


def _fingerprint(done: set[str]) -> str:
    return hashlib.sha256("\n".join(sorted(done)).encode()).hexdigest()[:16]


def log_experiment_run(settings: TrackingSettings, store, plan, config_hash: str, ran: set[str],
                       say: Callable[[str], None] | None = None) -> str | None:
    """Log the experiment run when the done jobs changed since the last one; returns the run's
    directory, or None when nothing was logged (tracking disabled, nothing new, a W&B error:
    tracking never fails a sweep; the error is returned to the caller as a warning). `say`
    tells of a fall-back to offline."""
    if settings.mode == "disabled":
        return None
    experiment = plan.experiment
    done = store.scan_artifacts().done() & set(plan.jobs)
    marker = f"experiments/{experiment}/wandb.json"
    fingerprint = _fingerprint(done)
    if store.exists(marker):
        try:
            if store.read_json(marker).get("done_jobs") == fingerprint:
                return None
        except (ValueError, OSError):
            pass  # unreadable marker: log again
    runs = store.read_table("runs", experiment).select(["job_id", "test_accuracy"]).to_pylist()
    inst = store.read_table("instability", experiment).select(["pair_id", "split", "barrier"]).to_pylist()
    rows = job_rows(plan, done, ran, runs, inst)

    import wandb

    # unique in the project: one run per set of done jobs (the newest, with the most, is complete);
    # the sweep's breaker decides, as for every job: a service that went silent mid-sweep costs
    # no second wait, and one that goes silent now costs one init timeout, then offline
    run, note = init_run(
        settings, group=experiment, job_type="experiment",
        name=f"experiment-{experiment}-{len(done)}of{len(plan.jobs)}-{fingerprint[:8]}",
        id_prefix=f"experiment-{experiment}",
        config={"experiment": experiment, "config_hash": config_hash, **hyperparameters(store, experiment)},
    )
    if note and say is not None:
        say(f"{note}: the experiment run logs offline; upload later with `wandb sync`")
    try:
        run.log({"jobs": wandb.Table(columns=COLUMNS, data=rows)})
        run.summary.update({
            "jobs_planned": len(plan.jobs), "jobs_done": len(done),
            "jobs_ran_by_this_lth_run": len(ran & done),
            "jobs_done_before": len(done - ran),
        })
        directory = run.dir
    finally:
        run.finish()
    store.write_bytes(marker, json.dumps({"done_jobs": fingerprint, "run": run.id}).encode())
    return directory
