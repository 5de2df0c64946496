"""The entry points the orchestrator calls: each job is a plain function call.

    run_train_job(job, paths, rt)        -> TrainResult        (trainers/train.py)
    run_interpolate_job(job, paths, rt)  -> InterpolateResult  (trainers/interpolate.py)

Both take plain dataclasses (trainers/jobs.py) and local paths, write their artifacts
atomically, and import nothing from Ray, W&B or the orchestrator, so a job runs the same in a
Ray actor, a SLURM step, a notebook or a test.
"""
from __future__ import annotations

from trainers.interpolate import interpolate
from trainers.jobs import InterpolateJob, InterpolatePaths, InterpolateResult, TrainJob, TrainPaths, TrainResult
from trainers.runtime import Runtime
from trainers.train import train


def run_train_job(job: TrainJob, paths: TrainPaths, rt: Runtime | None = None) -> TrainResult:
    return train(job, paths, rt or Runtime())


def run_interpolate_job(job: InterpolateJob, paths: InterpolatePaths, rt: Runtime | None = None) -> InterpolateResult:
    return interpolate(job, paths, rt or Runtime())
