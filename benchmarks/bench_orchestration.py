"""Orchestration overhead: N equal jobs through `lth run` vs the same jobs back to back in one
process through trainers/, on the same machine, in one command.

    python -m benchmarks.bench_orchestration                 # N=4 jobs of ~30 s each
    python -m benchmarks.bench_orchestration --seconds 5     # a quick look

The jobs are N dense runs (replicates 0..N-1) of cifar_resnet_20 on CIFAR-shaped synthetic
data (`--workload mlp`: the demo's LeNet-300-100 on digits, the worst case: steps of 0.3 ms),
with iterations chosen so one job takes about `--seconds`. `lth run` gets one worker
(`scheduler.max_workers=1`), so both sides run the jobs one after another on one core and the
ratio is the orchestrator's cost alone: Ray, actors, W&B offline runs, Parquet rows, done
records. Ray's start-up is measured on its own (ray.init + one actor round trip + shutdown),
and the fixed cost of a run by running the same command again once every job is done; the
ratios are reported with and without them.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "demo.yaml")


# What one job trains: a CIFAR ResNet on CIFAR-shaped synthetic data (steps of ~0.2 s on one
# CPU core, like a real job's), or the demo's MLP on digits (steps of ~0.3 ms: the worst case,
# where anything else running in the worker process shows).
WORKLOADS = {
    "resnet20": ["model=cifar_resnet_20", "data.name=synthetic", "data.image_size=32", "data.num_classes=10",
                 "data.num_train=2048", "data.num_test=256", "train.eval_train_examples=256"],
    "mlp": [],
}
WORKLOAD = "resnet20"


def overrides(n: int, iterations: int) -> list[str]:
    return WORKLOADS[WORKLOAD] + [
        f"sweep.replicates={n}", "sweep.rewind_iters=[0]", "pruning.levels=0", "sweep.branch.seeds=[]",
        "sweep.branch.levels=[0]", f"train.iterations={iterations}", "train.schedule.milestones=[]",
        "train.eval_every=0", "scheduler.max_workers=1", "resources.cpus=1",
    ]


def direct(n: int, iterations: int, store: str) -> float:
    """The same jobs, planned the same way, called back to back in this process."""
    from orchestrator.planner import plan
    from orchestrator.spec import load_spec
    from trainers.api import run_train_job
    from trainers.jobs import TrainPaths
    from trainers.runtime import Runtime

    torch.set_num_threads(1)
    spec = load_spec(CONFIG, overrides(n, iterations))
    jobs = [j for j in plan(spec).jobs.values() if j.kind == "train"]
    assert len(jobs) == n, len(jobs)
    rt = Runtime(device=torch.device("cpu"))
    start = time.perf_counter()
    for job in jobs:
        run_train_job(job.spec, TrainPaths(out_dir=os.path.join(store, job.id)), rt)
    return time.perf_counter() - start


def ray_startup() -> float:
    code = (
        "import time, ray; t = time.perf_counter(); ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False);"
        "a = ray.remote(num_cpus=1)(type('A', (), {'f': lambda self: 1})).remote(); ray.get(a.f.remote());"
        "ray.shutdown(); print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def through_lth(n: int, iterations: int, store: str) -> float:
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", CONFIG, "--store", store]
    for o in overrides(n, iterations):
        cmd += ["--set", o]
    env = dict(os.environ, PYTHONPATH=ROOT)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def calibrate(seconds: float) -> int:
    """Iterations for one job of about `seconds` on this machine (the slope of two short runs,
    so a job's fixed set-up does not count as iterations)."""
    short, long = (10, 40) if WORKLOAD == "resnet20" else (1000, 4000)
    with tempfile.TemporaryDirectory() as d:
        t1 = direct(1, short, os.path.join(d, "a"))
        t2 = direct(1, long, os.path.join(d, "b"))
    per_iter = max(1e-6, (t2 - t1) / (long - short))
    return max(100, int(seconds / per_iter))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--seconds", type=float, default=30.0, help="target duration of one job")
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="resnet20")
    args = p.parse_args()
    global WORKLOAD
    WORKLOAD = args.workload
    iterations = calibrate(args.seconds)
    with tempfile.TemporaryDirectory() as d:
        t_direct = direct(args.jobs, iterations, os.path.join(d, "direct"))
        t_lth = through_lth(args.jobs, iterations, os.path.join(d, "store"))
        # the same command again: every job is done, so this is the fixed cost of a run
        # (interpreter, imports, config, plan, Ray start-up, store scan, shutdown)
        t_fixed = through_lth(args.jobs, iterations, os.path.join(d, "store"))
        t_ray = ray_startup()
    print(f"device: cpu ({os.cpu_count()} cores)   workload: {WORKLOAD}   jobs: {args.jobs} x {iterations} iterations "
          f"(~{t_direct / args.jobs:.1f} s each in-process)")
    print(f"in-process, back to back : {t_direct:8.1f} s")
    print(f"lth run (1 worker)       : {t_lth:8.1f} s")
    print(f"lth run, all jobs done   : {t_fixed:8.1f} s   (fixed cost of a run)")
    print(f"Ray start-up (separately): {t_ray:8.1f} s")
    print(f"ratio lth / in-process                 : {t_lth / t_direct:.3f}")
    print(f"ratio without Ray start-up             : {(t_lth - t_ray) / t_direct:.3f}")
    print(f"ratio without the fixed cost (per job) : {(t_lth - t_fixed) / t_direct:.3f}")


if __name__ == "__main__":
    main()
