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
    # the outputs are synced together, once: 3 sync points where each file alone made 5
    assert calls["sync_dir (the outputs together)"] == 1
    assert calls["progress (log line + progress.json)"] == 4
    assert calls["flops_fraction"] == 1


def test_every_kept_output_is_on_disk_before_the_file_that_says_the_job_finished(tmp_path, monkeypatch):
    """The crash contract with the outputs synced together: weights, mask and W_0 before
    result.json (the trainer's mark of a finished job, reused only with checksums.json), and
    both before checksums.json (the worker's seal)."""
    torch.set_num_threads(1)
    synced: list[str] = []
    fsync = os.fsync

    def recording(fd: int) -> None:
        fsync(fd)
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))

    (job,) = job_cost._jobs(1)
    runner = JobRunner(WorkerContext(store_root=str(tmp_path), tracking=TrackingSettings(mode="disabled")))
    monkeypatch.setattr(os, "fsync", recording)
    runner.run(job, 1)
    monkeypatch.undo()

    def last(name: str) -> int:  # a temporary file is synced under its own name, then renamed
        return max(i for i, n in enumerate(synced) if n == name or (n.startswith(f".{name}.") and n.endswith(".tmp")))

    for output in ("weights.pt", "mask.pt", "w_0.pt"):
        assert last(output) < last("result.json") < last("checksums.json"), synced
