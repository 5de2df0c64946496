"""A small job's fixed cost: one 10-iteration LeNet-300-100 job on digits through the worker
(`JobRunner.run`: open_data to the last file written, W&B disabled, a local store), against the
bare training loop of the same job (the same model, data, batch size and optimizer, nothing
else) in the same process, quiet and with a CPU burner running beside it.

    python -m benchmarks.run --sections job_cost

Sweeps of small networks are thousands of such jobs, so what a job costs beyond its training
decides the sweep's time. The fixed cost is the job's time minus the bare loop's; its parts are
timed by wrapping the functions a job calls (os.fsync, checkpoint writes, the checksums, the
FLOP count, the weight correlation and layers rows, the progress file, building the model,
opening the data, evaluation), each a total per job with its calls per job: they can overlap
(a checkpoint write includes its fsync); the rest (the deterministic context, masks, the
optimizer, the record) is the fixed cost less these. Medians over interleaved rounds; the load is
one process spinning on a core, started and stopped here. On a machine shared with others the
absolute figures move with their work: read the ratios.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from typing import Any, Callable, Iterator

import torch

ITERATIONS = 10
CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.yaml")

# (module, attribute, part): the call sites a job goes through, patched where they are looked up
PARTS = [
    ("os", "fsync", "fsync (all files)"),
    ("trainers.checkpoint", "sync_dir", "sync_dir (the outputs together)"),
    ("trainers.checkpoint", "save", "checkpoint.save (weights, mask, W_k)"),
    ("trainers.checkpoint", "save_json", "result.json"),
    ("orchestrator.worker", "seal", "checksums (seal)"),
    ("trainers.structure", "flops_fraction", "flops_fraction"),
    ("trainers.train", "layer_rows", "weight correlation + layers rows"),
    ("orchestrator.jobprogress.EvalReporter", "__call__", "progress (log line + progress.json)"),
    ("trainers.train", "build_model", "build_model"),
    ("trainers.train", "open_data", "open_data"),
    ("trainers.train", "evaluate", "evaluation"),
]


def _resolve(path: str) -> Any:
    import importlib

    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(path)


@contextlib.contextmanager
def _timed_parts(totals: dict[str, float], calls: dict[str, int]) -> Iterator[None]:
    """Every PARTS function wrapped to add its time to totals[part] (and one to calls[part])
    while this is open."""
    patched = []
    for where, attr, part in PARTS:
        holder = _resolve(where)
        original = getattr(holder, attr)

        def wrapper(*args, _f=original, _part=part, **kwargs):
            t = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                totals[_part] = totals.get(_part, 0.0) + time.perf_counter() - t
                calls[_part] = calls.get(_part, 0) + 1

        patched.append((holder, attr, original))
        setattr(holder, attr, wrapper)
    try:
        yield
    finally:
        for holder, attr, original in reversed(patched):
            setattr(holder, attr, original)


def _jobs(n: int) -> list[Any]:
    from orchestrator.planner import plan
    from orchestrator.spec import load_spec

    spec = load_spec(CONFIG, [f"sweep.replicates={n}", "sweep.rewind_iters=[0]", "pruning.levels=0",
                              "sweep.branch.seeds=[]", "sweep.branch.levels=[0]", f"train.iterations={ITERATIONS}",
                              "train.schedule.milestones=[]", "resources.cpus=1"])
    jobs = [j for j in plan(spec).jobs.values() if j.kind == "train"]
    assert len(jobs) == n and all(j.spec.train.model == "mlp_300_100" for j in jobs)
    return jobs


def _bare_loop(job: Any) -> Callable[[], float]:
    """The job's training and nothing else: its model, data, batch size and optimizer, 10 steps
    on batches drawn the same way (a plain loop: no masks, no evaluation, no files)."""
    from trainers.data.sources import open_data
    from trainers.models import build_model

    cfg = job.spec.train
    data = open_data(cfg.data, torch.device("cpu"))

    def run() -> float:
        t = time.perf_counter()
        model = build_model(cfg.model, data.info.input_shape, data.info.num_classes, seed=job.spec.init_seed)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr, momentum=cfg.optimizer.momentum)
        stream = data.train_stream(job.spec.data_seed, cfg.batch_size, 0)
        for _ in range(ITERATIONS):
            x, y = next(stream)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t

    return run


def _spin(stop: Any) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


@contextlib.contextmanager
def _cpu_burner() -> Iterator[None]:
    """One process spinning on a core (what another job or a test suite does to this one)."""
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    proc = ctx.Process(target=_spin, args=(stop,), daemon=True)
    proc.start()
    time.sleep(0.5)  # running before the first measurement
    try:
        yield
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()


def _measure(jobs: list[Any], runner: Any, bare: Callable[[], float], rounds: int) -> dict[str, Any]:
    job_s, bare_s, totals, calls = [], [], {}, {}
    for job in jobs[:rounds]:
        bare_s.append(bare())
        t = time.perf_counter()
        with _timed_parts(totals, calls):
            runner.run(job, 1)
        job_s.append(time.perf_counter() - t)
    job_ms, bare_ms = 1000 * statistics.median(job_s), 1000 * statistics.median(bare_s)
    return {"job_ms": job_ms, "bare_loop_ms": bare_ms, "ratio_job_vs_bare": job_ms / bare_ms,
            "fixed_ms": job_ms - bare_ms, "jobs": len(job_s),
            "parts_ms": {p: 1000 * v / len(job_s) for p, v in sorted(totals.items(), key=lambda kv: -kv[1])},
            "calls_per_job": {p: c / len(job_s) for p, c in calls.items()}}


def bench_job_cost(quick: bool = False) -> dict[str, Any]:
    from orchestrator.tracking import TrackingSettings
    from orchestrator.worker import JobRunner, WorkerContext

    rounds = 10 if quick else 30
    warm = 3
    torch.set_num_threads(1)
    jobs = _jobs(warm + 2 * rounds)
    with tempfile.TemporaryDirectory(prefix="lth-bench-job-cost-") as store:
        runner = JobRunner(WorkerContext(store_root=store, tracking=TrackingSettings(mode="disabled")))
        bare = _bare_loop(jobs[0])
        for job in jobs[:warm]:  # imports, the data set's first load, allocator warm-up
            bare()
            runner.run(job, 1)
        quiet = _measure(jobs[warm:warm + rounds], runner, bare, rounds)
        with _cpu_burner():
            loaded = _measure(jobs[warm + rounds:], runner, bare, rounds)
    return {"model": "mlp_300_100", "data": "digits", "iterations": ITERATIONS, "device": "cpu (1 thread)",
            "path": "orchestrator.worker.JobRunner.run (W&B disabled, local store) vs a bare loop of the same job",
            "quiet": quiet, "under_load": loaded, "load": "one spinning process started by the benchmark",
            "under_load_vs_quiet": loaded["job_ms"] / quiet["job_ms"],
            "bare_under_load_vs_quiet": loaded["bare_loop_ms"] / quiet["bare_loop_ms"]}
