"""Planning early-bird tickets (pruning.early_bird): one search job per replicate and its retrain
jobs, all known before anything runs.

The detection epoch is an output of the search, so no job id depends on it: a retrain job's id
covers the search's id and the name of the file it reads (eb_mask_<p>.pt, ...), and a `continue`
job reads its starting iteration from eb_<p>.json at run time (TrainJob.start_at_detection).

- search (role early_bird, retrain eb_search, level 0): the dense network trained with the
  sweep's TrainConfig (so train.l1_gamma) and the detectors; it saves W_k at the sweep's
  rewinding points (those it reaches before it stops).
- per fraction p and mode (role early_bird, level 1, retrain eb_<mode>, density 1 - p nominal:
  the reference's strict threshold prunes at least that much):
    continue  weights and mask at detection, schedule and data order continued from there;
    reinit    the mask at detection, fresh weights (seed from replicate and p), trained 0 -> T;
    rewind    the mask at detection on W_k of the search, trained k -> T, for every k.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from orchestrator.jobid import derived_seed
from trainers import early_bird_files as eb
from trainers.job_files import rewind_file
from trainers.jobs import EarlyBirdConfig, TrainJob

ROLE = "early_bird"


def search_config(spec: Any) -> EarlyBirdConfig:
    e, p = spec.pruning.early_bird, spec.pruning
    return EarlyBirdConfig(kind=e.kind, fractions=tuple(float(f) for f in e.fractions), queue=e.queue,
                           threshold=e.threshold, stop=e.stop, groups=p.groups, ignore=tuple(p.ignore))


def add_early_bird(b: Any, r: int) -> None:
    """Add replicate r's search and retrain jobs to the planner's builder `b` (planner._Builder)."""
    spec = b.spec
    e = spec.pruning.early_bird
    strategy = f"early_bird_{e.kind}"
    search_job = TrainJob(train=b.cfg, init_seed=r, data_seed=b.ds, save_iters=tuple(sorted(b.ks)),
                          early_bird=search_config(spec))
    meta0 = b.meta(ROLE, r, 0, 0, b.ds, "eb_search", strategy)
    search = b.add("train", search_job, {}, replace(meta0, density=1.0))
    # a channel ticket's retrains report their channel density over the search's groups
    report = (spec.pruning.groups, tuple(spec.pruning.ignore)) if e.kind == "channel" else None
    for p in e.fractions:
        mask = (search, eb.mask_file(p))
        for mode in e.retrain:
            starts = []
            if mode == "continue":
                job = TrainJob(train=b.cfg, init_seed=r, data_seed=b.ds, start_at_detection=True, channel_report=report)
                inputs = {"parent_mask": mask, "rewind_weights": (search, eb.weights_file(p)),
                          "detection": (search, eb.detection_file(p))}
                starts.append((0, job, inputs))
            elif mode == "reinit":
                job = TrainJob(train=b.cfg, init_seed=r, data_seed=b.ds, channel_report=report,
                               reinit_seed=derived_seed("eb_reinit", r, round(p * 1_000_000)))
                starts.append((0, job, {"parent_mask": mask}))
            else:
                for k in b.ks:
                    job = TrainJob(train=b.cfg, init_seed=r, data_seed=b.ds, start_iter=k, channel_report=report)
                    starts.append((k, job, {"parent_mask": mask, "rewind_weights": (search, rewind_file(k))}))
            for k, job, inputs in starts:
                meta = b.meta(ROLE, r, k, 1, b.ds, f"eb_{mode}", strategy, parent=search)
                b.add("train", job, inputs, replace(meta, density=1.0 - p))
