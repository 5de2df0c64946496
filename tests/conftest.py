"""Shared test fixtures: the tiny demo sweep, a Ray session per module, running `lth`."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")

# configs/demo.yaml shrunk to seconds: 1 replicate, k in {0, 10}, 2 levels, branches at 0 and 2
# (1 dense run + 2 x (2 levels + 4 children) = 13 train jobs, 4 interpolate jobs; plus the
# demo's pruning at init from W_0: 2 methods x 2 levels x (method, shuffle) = 8 train jobs).
TINY = [
    "train.iterations=40",
    "train.schedule.milestones=[20, 30]",
    "train.eval_every=20",
    "train.eval_train_examples=128",
    "pruning.levels=2",
    "sweep.replicates=1",
    "sweep.rewind_iters=[0, 10]",
    "sweep.branch.levels=[0, 2]",
    "sweep.branch.num_alphas=3",
    "sweep.branch.train_examples=128",
    "scheduler.checkpoint_every_iters=10",
    "scheduler.max_attempts=2",
]


def tiny_args(*extra: str) -> list[str]:
    out: list[str] = []
    for s in [*TINY, *extra]:
        out += ["--set", s]
    return out


def lth_env(**extra: str) -> dict[str, str]:
    """The environment of an `lth` subprocess (and of Ray workers): the repo importable,
    W&B offline and quiet, one thread per process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("WANDB_API_KEY", None)
    env.pop("LTH_FAULT_INJECT", None)
    env.update(WANDB_SILENT="true", OMP_NUM_THREADS="1", RAY_DEDUP_LOGS="0")
    env.update(extra)
    return env


def run_lth(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=REPO, env=env or lth_env(), capture_output=True, text=True, timeout=timeout,
    )


def tree_digest(store: Path, job_ids) -> dict[str, str]:
    """sha256 of every artifact file of `job_ids` except bookkeeping (done/result records)."""
    out = {}
    for job_id in job_ids:
        d = store / "artifacts" / job_id
        for f in sorted(d.iterdir()):
            if f.suffix == ".pt":
                out[f"{job_id}/{f.name}"] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def masked_snapshots(runs, iteration: int):
    """(file, weights, mask) for each run's snapshot at `iteration` and its final weights: what
    the pruned-weights-stay-zero checks read."""
    from trainers import checkpoint

    for r in runs:
        mask = checkpoint.load_mask(r.mask_path)
        for path in (r.saved_weights[iteration], r.weights_path):
            yield path, checkpoint.load_weights(path), mask


def _gpu_suite_selected(config) -> bool:
    """Whether this run is the GPU suite: `-m gpu` (make gpu-test, benchmarks/gpu_session.sh)."""
    return (config.option.markexpr or "").strip() == "gpu"


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need a CUDA device. In the CPU suite they are skipped where there is
    none; the GPU suite (-m gpu) fails instead: a GPU run that skipped everything must not pass."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    if _gpu_suite_selected(config):
        raise pytest.UsageError(
            "the GPU suite (-m gpu) found no CUDA device (torch.cuda.is_available() is False: "
            f"torch {torch.__version__}, CUDA build {torch.version.cuda}); it runs only where a GPU is visible"
        )
    skip = pytest.mark.skip(reason="needs a CUDA device (the GPU suite: make gpu-test)")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def isolated_default_store(tmp_path_factory, monkeypatch):
    """A command given no --store uses $LTH_STORE, then ./lth-store: point it at a fresh folder,
    so no test reads or writes the store a user's `make demo` left in the checkout (or their own
    $LTH_STORE), and what a test finds there is only what the test put there."""
    monkeypatch.setenv("LTH_STORE", str(tmp_path_factory.mktemp("default-store") / "store"))


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray (2 CPUs) per test module: `lth run` in-process reuses it. On 127.0.0.1, as
    the embedded Ray of `lth run` is (orchestrator/raysession.py): a gang meets at its Ray node's
    address, and tests listen on loopback only."""
    import ray

    os.environ["PYTHONPATH"] = lth_env()["PYTHONPATH"]  # the workers must import the repo
    os.environ.update(WANDB_SILENT="true")
    os.environ.pop("WANDB_API_KEY", None)
    temp = tempfile.mkdtemp(prefix="lth-ray-test-", dir="/tmp")
    from orchestrator.raysession import _keep_ray_on_loopback

    _keep_ray_on_loopback()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR", _temp_dir=temp,
             _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
