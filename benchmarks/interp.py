"""Cost of one `interpolate` job: a cifar_resnet_20 pair, 31 alphas, test + train subsets.

The target size is 10,000 test + 10,000 train examples (620,000 network evaluations); on a CPU
the benchmark runs a smaller subset and also reports the full-size time extrapolated from the
per-evaluation cost. The data set is opened before the clock starts (a worker's runtime caches
it across jobs); the job's own time covers loading the weights and every evaluation.
"""
from __future__ import annotations

import os
import tempfile
import time

import torch

from benchmarks.common import Settings
from trainers import checkpoint
from trainers.api import run_interpolate_job
from trainers.data.sources import open_data
from trainers.jobs import DataConfig, InterpolateJob, InterpolatePaths, TrainConfig
from trainers.models import build_model
from trainers.runtime import Runtime

FULL_EXAMPLES = 10_000


def bench_interpolation(settings: Settings, model: str = "cifar_resnet_20") -> dict:
    n = FULL_EXAMPLES if settings.cuda else (250 if settings.quick else 1000)
    alphas = 31
    cfg = TrainConfig(model=model, data=DataConfig(name="synthetic", image_size=32, num_classes=10, num_train=n,
                                                   num_test=n, augment=False), iterations=1, batch_size=128)
    rt = Runtime(device=settings.device)
    data = open_data(cfg.data, rt.device, rt.data_cache)
    with tempfile.TemporaryDirectory(prefix="lth-bench-interp-") as tmp:
        paths = []
        for seed in (0, 1):
            path = os.path.join(tmp, f"w{seed}.pt")
            checkpoint.save(checkpoint.state_dict_cpu(build_model(model, data.info.input_shape, 10, seed=seed)), path)
            paths.append(path)
        job = InterpolateJob(train=cfg, num_alphas=alphas, splits=("test", "train"), train_examples=n)
        run_interpolate_job(InterpolateJob(train=cfg, num_alphas=2, train_examples=n), InterpolatePaths(*paths), rt)  # warmup
        t = time.perf_counter()
        result = run_interpolate_job(job, InterpolatePaths(*paths), rt)
        seconds = time.perf_counter() - t
    evaluations = alphas * 2 * n
    full = alphas * 2 * FULL_EXAMPLES
    return {
        "model": model, "alphas": alphas, "examples_per_split": n, "seconds": seconds, "job_wall_seconds": result.wall_seconds,
        "evaluations_per_s": evaluations / seconds,
        "seconds_full_size": seconds * full / evaluations,  # extrapolated when n < 10,000
        "full_size_measured": n == FULL_EXAMPLES,
        "precision": "bf16 autocast" if settings.cuda else "fp32",
    }


if __name__ == "__main__":
    print(bench_interpolation(Settings(device=torch.device("cpu"), quick=True)))
