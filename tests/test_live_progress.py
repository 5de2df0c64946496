"""Progress of long jobs (issue 21, item 4): running jobs with their iteration and rate, and an
ETA that moves while they run, measured without the workers' cold start. No Ray."""
from __future__ import annotations

import json
import re
from io import StringIO
from types import SimpleNamespace

from orchestrator.jobprogress import EvalReporter, read_progress
from orchestrator.progress import SweepProgress
from orchestrator.store import Store


def test_eta_counts_in_flight_iterations_at_the_workers_measured_rate():
    progress = SweepProgress("e", live=False)
    progress.start(total=3, done=0, work={"x": ("train", 100), "a": ("train", 100), "b": ("train", 100)})
    progress.workers = 1
    progress.counts.done = 1
    # x took 100 s of wall time for 100 iterations, cold start included: 1 s per iteration
    progress.job_finished("x", "level", 100.0)
    assert progress.eta() == "3m20s"  # (100 + 100) x 1 s, before any report
    # a reports 50 of its 100 iterations done at 10 it/s (its own rate, from its first evaluation):
    # 50 + 100 iterations left at 0.1 s each
    progress.job_progress("a", "level r0 k0 L1", "train", 50, 100, 10.0)
    assert progress.eta() == "0m15s"
    progress.job_progress("a", "level r0 k0 L1", "train", 90, 100, 10.0)
    assert progress.eta() == "0m11s"  # the ETA moves while the job runs: (10 + 100) x 0.1 s


def test_the_live_view_shows_running_jobs_with_iteration_and_rate(monkeypatch):
    from rich.console import Console

    monkeypatch.setenv("TERM", "xterm")
    console = Console(file=StringIO(), record=True, force_terminal=True, width=100)
    progress = SweepProgress("e", live=True, console=console)
    progress.start(total=2, done=0, work={"a" * 20: ("train", 400), "b" * 20: ("train", 400)})
    progress.workers = 2
    progress.job_progress("a" * 20, "level r0 k0 L1 seed0 rewind", "train", 120, 400, 12.5)
    progress.refresh()
    progress.stop()
    text = console.export_text(styles=False, clear=False)
    assert "aaaaaaaaaaaa level r0 k0 L1 seed0 rewind: iteration 120/400 (30%, 12.5 it/s)" in text, text


def test_a_job_reports_each_evaluation_and_its_rate_without_the_cold_start(tmp_path, capsys):
    from trainers.jobs import MetricRow

    store = Store(str(tmp_path / "store"))
    spec = SimpleNamespace(start_iter=0, stop_iter=40, retrain="rewind", prune=None, finetune_lr=0.0,
                           train=SimpleNamespace(batch_size=32, iterations=40, optimizer=SimpleNamespace(lr=0.1),
                                                 schedule=SimpleNamespace(name="constant", warmup_iters=0,
                                                                          milestones=[], gamma=0.1)))
    now = [100.0]  # the first evaluation comes 100 s after the worker started (torch, data): not counted
    reporter = EvalReporter(store, SimpleNamespace(id="j1", spec=spec), clock=lambda: now[0])
    for it, t in ((0, 100.0), (20, 102.0), (40, 106.0)):
        now[0] = t
        reporter(MetricRow(iteration=it, split="test", loss=0.5, accuracy=0.9))
        reporter(MetricRow(iteration=it, split="train", loss=0.4, accuracy=0.95))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("eval iteration 0/40: test loss 0.5 accuracy 90.00%, train loss 0.4 accuracy 95.00%, "
                        "lr 0.1, images/s -")
    assert lines[1].endswith("images/s 320")  # 20 iterations x 32 images in 2 s
    assert lines[2].endswith("images/s 160")
    p = read_progress(store, "j1")
    assert (p.iteration, p.iterations_done, p.stop_iter) == (40, 40, 40)
    assert p.rate == 40 / 6.0  # from the first evaluation on; with the cold start it would be 40/106


def test_the_progress_file_is_written_without_a_sync_and_an_empty_one_reads_as_none(tmp_path, monkeypatch):
    """progress.json is rewritten at every evaluation and only read as a hint: it is written
    atomically but not fsynced (two fsyncs a job were a large part of a short job's fixed cost,
    benchmarks/job_cost.py), while every other store file still is. What a crash can leave
    (an empty file) reads as no report yet."""
    import os

    from trainers.jobs import MetricRow

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    store = Store(str(tmp_path / "store"))
    spec = SimpleNamespace(start_iter=0, stop_iter=10, retrain="rewind", prune=None, finetune_lr=0.0,
                           train=SimpleNamespace(batch_size=32, iterations=10, optimizer=SimpleNamespace(lr=0.1),
                                                 schedule=SimpleNamespace(name="constant", warmup_iters=0,
                                                                          milestones=[], gamma=0.1)))
    reporter = EvalReporter(store, SimpleNamespace(id="j1", spec=spec), clock=lambda: 1.0)
    reporter(MetricRow(iteration=0, split="test", loss=0.5, accuracy=0.9))
    reporter(MetricRow(iteration=0, split="train", loss=0.4, accuracy=0.95))
    assert read_progress(store, "j1").iteration == 0 and synced == []
    store.write_json("artifacts/j1/other.json", {"a": 1})  # the default stays durable
    assert len(synced) == 1
    (tmp_path / "store" / "artifacts" / "j1" / "progress.json").write_bytes(b"")
    assert read_progress(store, "j1") is None
