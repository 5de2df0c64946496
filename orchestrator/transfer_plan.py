"""Planning ticket transfer (`transfer`; Morcos, Yu, Paganini & Tian, NeurIPS 2019).

- The source's jobs: the source config is planned by the same planner, so its jobs have the
  ids the source experiment gives them (jobs already in the store are reused, not retrained;
  missing ones are trained first). Only what the tickets need is kept: the source level jobs
  of `transfer.levels` in the rewind lineage (replicate, k) and their ancestors (the dense run,
  whose W_k they read). Role `source`, so the target's own tables never count them.
- Per replicate r of this config, source level l and variant (the ticket and each control):
  one train job (role `transfer`, level l, rewind_iter k) of this config's TrainConfig from
  iteration 0, whose inputs are the source level's mask.pt and the source dense run's
  w_<k>.pt: its id covers both source jobs' ids. retrain `transfer`, `transfer_random_mask`
  or `transfer_fresh_weights`; density the source's planned one at l (runs.density measures
  the job's own, the output layer included).
- The target's own IMP ticket at the same density is this config's own sweep, planned by the
  planner as for any config (spec: same strategy and fraction as the source's).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from orchestrator.jobid import derived_seed
from orchestrator.limits import MAX_JOBS
from orchestrator.spec import SpecError
from trainers.job_files import MASK, rewind_file
from trainers.jobs import TransferConfig, TrainJob

ROLE = "transfer"
SOURCE_ROLE = "source"
RETRAIN = {"ticket": "transfer", "random_mask": "transfer_random_mask", "fresh_weights": "transfer_fresh_weights"}


def add_transfer(b: Any, source_jobs: dict[str, Any], density: list[float]) -> None:
    """Add the source's needed jobs and the transfer jobs to the planner's builder `b`
    (planner._Builder); `source_jobs`: the source config's whole plan, `density`: its planned
    density at each level."""
    tr = b.spec.transfer
    src = tr.source_spec
    k, r_src = tr.rewind_iter, tr.replicate
    strategy = src.pruning.strategy
    dense = next(j.id for j in source_jobs.values()
                 if j.meta.role == "level" and j.meta.level == 0 and j.meta.replicate == r_src)
    tickets = {j.meta.level: j.id for j in source_jobs.values()
               if j.meta.role == "level" and j.meta.replicate == r_src and j.meta.rewind_iter == k
               and j.meta.retrain == "rewind" and j.meta.prune_strategy == strategy
               and j.meta.data_seed == src.sweep.data_seed and j.meta.level in tr.levels}
    needed: set[str] = set()
    todo = [dense, *tickets.values()]
    while todo:
        jid = todo.pop()
        if jid not in needed:
            needed.add(jid)
            todo.extend(source_jobs[jid].parents)
    for jid, job in source_jobs.items():  # in the source plan's topological order
        if jid in needed and jid not in b.jobs:
            if len(b.jobs) >= MAX_JOBS:
                raise SpecError("transfer", f"the plan passes {MAX_JOBS:,} jobs with the source's")
            b.jobs[jid] = replace(job, meta=replace(job.meta, experiment=b.name, role=SOURCE_ROLE,
                                                    config_hash=b.config_hash))
    for r in b.spec.init_seeds:
        for level in tr.levels:
            seed = derived_seed("transfer", r, k, level)
            for control in ("ticket", *tr.controls):
                job = TrainJob(train=b.cfg, init_seed=r, data_seed=b.ds,
                               transfer=TransferConfig(output_layer=tr.output_layer, control=control, seed=seed))
                inputs = {"parent_mask": (tickets[level], MASK), "rewind_weights": (dense, rewind_file(k))}
                meta = replace(b.meta(ROLE, r, k, 0, b.ds, RETRAIN[control], strategy, parent=tickets[level]),
                               level=level, density=density[level], ticket_source=tickets[level],
                               ticket_source_data=src.data.name, ticket_source_optimizer=src.train.optimizer.name)
                b.add("train", job, inputs, meta)
