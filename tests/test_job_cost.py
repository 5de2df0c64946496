"""benchmarks/job_cost.py, the fixed cost of a small job: its instrumentation measures the real
call sites and leaves them as they were; a job syncs only the files it must keep."""
from __future__ import annotations

import os

import torch

from benchmarks import job_cost
from orchestrator.tracking import TrackingSettings
from orchestrator.worker import JobRunner, WorkerContext
from trainers import checkpoint, structure


def test_one_job_measured_part_by_part_and_the_functions_restored(tmp_path):
    torch.set_num_threads(1)
    originals = (os.fsync, checkpoint.save, structure.flops_fraction)
    (job,) = job_cost._jobs(1)
    runner = JobRunner(WorkerContext(store_root=str(tmp_path), tracking=TrackingSettings(mode="disabled")))
    out = job_cost._measure([job], runner, job_cost._bare_loop(job), 1)
    assert (os.fsync, checkpoint.save, structure.flops_fraction) == originals
    assert out["jobs"] == 1 and out["job_ms"] > out["bare_loop_ms"] > 0
    calls = out["calls_per_job"]
    # every part a job goes through was seen (a renamed call site would silently measure nothing)
    assert {p for _, _, p in job_cost.PARTS} == set(calls), set(job_cost.PARTS) ^ set(calls)
    # what a job syncs: weights.pt, mask.pt, w_0.pt, result.json and checksums.json; the progress
    # file written at each of the 2 evaluations is not synced (a sixth and seventh before)
    assert calls["fsync (all files)"] == 5 and calls["progress (log line + progress.json)"] == 4
    assert calls["flops_fraction"] == 1
