"""A sweep of many small jobs through `lth run`, side by side with Ray Tune running the same work
as trials, on this machine, in one command (rounds interleaved: lth, Tune, Tune, lth, ...).

    make bench-tune                                    # installs the `bench` extra (ray[tune]), then runs it
    python -m benchmarks.vs_tune --trials 1000 --rounds 2
    python -m benchmarks.vs_tune --quick               # 200 trials, one round, quiet only

The work: N dense LeNet-300-100 runs on digits (init seeds 0..N-1, data seed 0), 10 iterations
of batch 64 with SGD, evaluated (test set and 1,024 training examples) at iteration 0 and at the
end, one torch thread per job, as many jobs at once as the machine has cores. lth runs it as a
sweep (`lth run`, its local Ray, W&B disabled, a fresh store: every job keeps its weights, mask
and rewinding point W_0, checksums, record and rows). Tune runs it as N trials of a function
trainable that calls the same trainers/ functions, tuned for throughput (actors reused, result
loggers off, verbosity 0), two ways: keeping what a lineage needs from a job (the trained
weights, the mask and W_0, as a Tune checkpoint), and keeping nothing (the floor: work no IMP
sweep could build on). Neither side sends anything to W&B.

Reported per side: the sweep's wall time (the command from start to exit, Ray's start included
on every side) and the median time of one job/trial (lth: the record's `wall_seconds`, the
worker's call from start to record; Tune: `time_total_s`, which Tune measures around the
trainable). `--load` adds the same rounds beside a process spinning on a core (what a test
suite or another sweep does to a sweep). Medians over rounds; ratios are lth / Tune, so below 1
is lth faster.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITERATIONS = 10
BATCH = 64
EVAL_TRAIN = 1024

CONFIG = f"""\
name: vs-tune
model: mlp_300_100
data: {{name: digits}}
train:
  iterations: {ITERATIONS}
  batch_size: {BATCH}
  optimizer: {{name: sgd, lr: 0.05, momentum: 0.9, nesterov: false, weight_decay: 1.0e-4}}
  schedule: {{name: step, milestones: [], gamma: 0.1, warmup_iters: 0}}
  eval_every: 0
  eval_train_examples: {EVAL_TRAIN}
pruning: {{strategy: magnitude_global, fraction: 0.5, levels: 0}}
sweep: {{replicates: {{n}}, rewind_iters: [0], data_seed: 0}}
resources: {{gpus: 0, cpus: 1}}
tracking: {{wandb: disabled}}
"""


# ---- the Tune side (a child process: its own Ray, like `lth run`) -----------------------------

_DATA: dict[str, Any] = {}  # per trial actor: digits opened once (reused actors keep it)


def tune_trial(config: dict[str, Any]) -> None:
    """One trial: the same work as one lth job (trainers/ functions), no files."""
    import torch
    import torch.nn.functional as F
    from ray import tune

    from trainers.data.bundle import Shard
    from trainers.data.sources import open_data
    from trainers.evaluate import evaluate
    from trainers.jobs import DataConfig
    from trainers.models import build_model

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    if "digits" not in _DATA:
        _DATA["digits"] = open_data(DataConfig(name="digits"), torch.device("cpu"))
    data = _DATA["digits"]
    model = build_model("mlp_300_100", data.info.input_shape, data.info.num_classes, seed=config["seed"])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    def run_eval() -> dict[str, float]:
        out = {}
        for split, limit in (("test", None), ("train", EVAL_TRAIN)):
            batches = data.eval_batches(split, max(BATCH, 256), limit, Shard(0, 1))
            loss, acc = evaluate(model, batches, torch.device("cpu"), "auto", False, 1)
            out[f"{split}_loss"], out[f"{split}_accuracy"] = loss, acc
        return out

    run_eval()
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()} if config["keep"] else None
    model.train()
    stream = data.train_stream(0, BATCH, 0, Shard(0, 1))
    for _ in range(ITERATIONS):
        x, y = next(stream)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    final = run_eval()
    if not config["keep"]:
        tune.report({**final, "work_s": time.perf_counter() - t0})
        return
    # what a lineage needs from the job, as lth keeps it: the trained weights, the mask and the
    # rewinding point W_0, in a Tune checkpoint (Tune copies it into the trial's storage)
    with tempfile.TemporaryDirectory() as d:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, os.path.join(d, "weights.pt"))
        torch.save({n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if p.dim() > 1},
                   os.path.join(d, "mask.pt"))
        torch.save(w0, os.path.join(d, "w_0.pt"))
        tune.report({**final, "work_s": time.perf_counter() - t0}, checkpoint=tune.Checkpoint.from_directory(d))


def tune_child(n: int, out: str, keep: bool) -> None:
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/JSON/TensorBoard files
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune

    cpus = os.cpu_count() or 1
    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, logging_level="ERROR")
    with tempfile.TemporaryDirectory(prefix="lth-bench-tune-") as storage:
        tuner = tune.Tuner(
            tune.with_resources(tune_trial, {"cpu": 1}),
            param_space={"seed": tune.grid_search(list(range(n))), "keep": keep},
            tune_config=tune.TuneConfig(max_concurrent_trials=cpus, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=storage, verbose=0, log_to_file=False),
        )
        t1 = time.perf_counter()
        grid = tuner.fit()
        t2 = time.perf_counter()
        work = [r.metrics["work_s"] for r in grid if r.metrics and "work_s" in r.metrics]
        tune_s = [r.metrics["time_total_s"] for r in grid if r.metrics and "time_total_s" in r.metrics]
        errors = sum(1 for r in grid if r.error is not None)
    t3 = time.perf_counter()
    ray.shutdown()
    with open(out, "w") as f:
        json.dump({"work_s": work, "time_total_s": tune_s, "errors": errors, "init_s": t1 - t0, "fit_s": t2 - t1,
                   "shutdown_s": time.perf_counter() - t3}, f)


# ---- the parent: alternating rounds ----------------------------------------------------------

def _lth_round(n: int, workdir: str, env: dict[str, str]) -> dict[str, Any]:
    import numpy as np
    import pyarrow.dataset as ds

    cfg = os.path.join(workdir, "vs-tune.yaml")
    with open(cfg, "w") as f:
        f.write(CONFIG.replace("{n}", str(n)))
    store = tempfile.mkdtemp(prefix="store-", dir=workdir)
    lth = os.path.join(os.path.dirname(sys.executable), "lth")
    t = time.perf_counter()
    proc = subprocess.run([lth, "run", cfg, "--store", store], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"lth run exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    runs = ds.dataset(os.path.join(store, "results", "runs"), format="parquet", partitioning="hive").to_table(
        columns=["wall_seconds"])
    job_s = np.asarray(runs["wall_seconds"].to_pylist())
    if len(job_s) != n:
        raise RuntimeError(f"lth run wrote {len(job_s)} runs rows for {n} jobs")
    return {"sweep_s": wall, "job_ms_median": 1000 * float(np.median(job_s)), "jobs": int(len(job_s))}


def _tune_round(n: int, workdir: str, env: dict[str, str], keep: bool) -> dict[str, Any]:
    out = os.path.join(workdir, f"tune-{time.time_ns()}.json")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.vs_tune", "--child", out, "--trials", str(n),
                           *(["--keep"] if keep else [])],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"the Tune child exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    with open(out) as f:
        got = json.load(f)
    if got["errors"] or len(got["work_s"]) != n:
        raise RuntimeError(f"Tune finished {len(got['work_s'])} of {n} trials ({got['errors']} errors)")
    return {"sweep_s": wall, "job_ms_median": 1000 * statistics.median(got["time_total_s"]), "jobs": len(got["work_s"]),
            "trainable_ms_median": 1000 * statistics.median(got["work_s"]),
            "ray_init_s": got["init_s"], "fit_s": got["fit_s"], "shutdown_s": got["shutdown_s"]}


SIDES = ("lth", "tune_keep", "tune_bare")
LABELS = {"lth": "lth run", "tune_keep": "Tune, outputs kept", "tune_bare": "Tune, nothing kept"}


def _side_by_side(n: int, rounds: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="lth-bench-vs-tune-") as workdir:
        for _ in range(rounds):  # interleaved: a slow minute of the machine hits every side
            runs["lth"].append(_lth_round(n, workdir, env))
            runs["tune_keep"].append(_tune_round(n, workdir, env, keep=True))
            runs["tune_bare"].append(_tune_round(n, workdir, env, keep=False))
    out: dict[str, Any] = {}
    for side, rows in runs.items():
        out[side] = {"sweep_s": statistics.median(r["sweep_s"] for r in rows),
                     "job_ms": statistics.median(r["job_ms_median"] for r in rows), "rounds": rows}
    for side in ("tune_keep", "tune_bare"):
        out[f"sweep_ratio_vs_{side}"] = out["lth"]["sweep_s"] / out[side]["sweep_s"]
        out[f"job_ratio_vs_{side}"] = out["lth"]["job_ms"] / out[side]["job_ms"]
    return out


def bench_vs_tune(trials: int = 1000, rounds: int = 2, load: bool = True) -> dict[str, Any]:
    try:
        import ray.tune  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"benchmarks.vs_tune needs Ray Tune: `make bench-tune` installs the bench extra ({e})")
    from benchmarks.job_cost import _cpu_burner

    report = {"trials": trials, "iterations": ITERATIONS, "model": "mlp_300_100", "data": "digits",
              "cores": os.cpu_count(), "ray": __import__("ray").__version__,
              "path": "lth run (local Ray, W&B disabled, fresh store) vs ray.tune.Tuner (function trainable, "
                      "reuse_actors, loggers off) calling the same trainers/ functions",
              "quiet": _side_by_side(trials, rounds)}
    if load:
        with _cpu_burner():
            report["under_load"] = _side_by_side(trials, rounds)
    return report


def render(r: dict[str, Any]) -> str:
    lines = [f"{r['trials']} jobs of {r['iterations']} iterations of {r['model']} on {r['data']}, "
             f"{r['cores']} cores, Ray {r['ray']}: {r['path']}",
             "| machine | side | sweep s | lth / this | job ms (median) | lth / this |",
             "|---|---|---|---|---|---|"]
    for key, label in (("quiet", "no added load"), ("under_load", "beside a CPU burner")):
        if key not in r:
            continue
        s = r[key]
        for side in SIDES:
            ratio = "" if side == "lth" else f"{s[f'sweep_ratio_vs_{side}']:.2f}"
            jratio = "" if side == "lth" else f"{s[f'job_ratio_vs_{side}']:.2f}"
            lines.append(f"| {label} | {LABELS[side]} | {s[side]['sweep_s']:.1f} | {ratio} | {s[side]['job_ms']:.1f} | {jratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=1000, help="jobs per side (lth: sweep.replicates, at most 1000)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--no-load", action="store_true", help="skip the rounds beside a CPU burner")
    p.add_argument("--quick", action="store_true", help="200 trials, one round, quiet only")
    p.add_argument("--json", help="also write the report here")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: run the Tune side, write its JSON here
    p.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)  # internal: the Tune side keeps outputs
    a = p.parse_args(argv)
    if a.child:
        tune_child(a.trials, a.child, a.keep)
        return 0
    if a.quick:
        a.trials, a.rounds, a.no_load = 200, 1, True
    report = bench_vs_tune(a.trials, a.rounds, load=not a.no_load)
    print(render(report))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
