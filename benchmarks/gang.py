"""One job on N ranks against the same job on one rank, same device type, our trainer.

Both run `trainers.train.train` on the same global batch; the N-rank run is N processes in a
torch.distributed group (gloo on CPU, NCCL on CUDA with one GPU per rank). Steady-state rate:
global images per second between iteration `warmup` and the end, timed on rank 0 through
`Runtime.on_step` (start-up, data loading and the final evaluation excluded). The row names the
path that ran (backend, DDP or not, BatchNorm module) and fails when it is not the one asked for.

    python -m benchmarks.run --sections gang --device cpu --models cifar_resnet_20   # here
    python -m benchmarks.run --sections gang --device cuda --models resnet50 --ranks 8 # GPU figures: pending
"""
from __future__ import annotations

import os
import tempfile
import time

import torch
import torch.multiprocessing as mp

from benchmarks.common import Settings


def _job(model: str, batch_size: int, iterations: int, device: torch.device):
    from trainers.jobs import DataConfig, OptimizerConfig, TrainConfig, TrainJob

    side = 224 if model.startswith("resnet") else 32
    data = DataConfig(name="synthetic", image_size=side, num_classes=10 if side == 32 else 1000,
                      num_train=batch_size * 4, num_test=batch_size, augment=False)
    cfg = TrainConfig(model=model, data=data, iterations=iterations, batch_size=batch_size,
                      optimizer=OptimizerConfig(name="sgd", lr=0.01, momentum=0.9), eval_train_examples=batch_size,
                      channels_last=device.type == "cuda", bn_sync="global")
    return TrainJob(train=cfg, init_seed=0, data_seed=0)


def _rank(rank: int, world: int, port: int, job, device_type: str, warmup: int, out: dict) -> None:
    from trainers import distributed
    from trainers.jobs import TrainPaths
    from trainers.runtime import Runtime
    from trainers.train import train

    torch.set_num_threads(1)
    device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    times: dict[int, float] = {}

    def on_step(it: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times[it] = time.perf_counter()

    rt = Runtime(device=device, rank=rank, world_size=world, on_step=on_step)
    if world > 1:
        distributed.join(distributed.GangMember(rank, world, "127.0.0.1", port, 600), device)
    path = "single"
    try:
        with tempfile.TemporaryDirectory() as d:
            train(job, TrainPaths(out_dir=d), rt)
        if world > 1:
            import torch.distributed as dist

            path = f"ddp-{dist.get_backend()}"
    finally:
        distributed.leave()
    if rank == 0:
        end = max(times)
        out.update(seconds=times[end] - times[warmup], steps=end - warmup, path=path)


def _measure(job, world: int, device: torch.device, warmup: int) -> dict:
    from trainers import distributed

    if world == 1:
        out: dict = {}
        _rank(0, 1, 0, job, device.type, warmup, out)
        return out
    with mp.Manager() as m:
        out = m.dict()
        mp.spawn(_rank, args=(world, distributed.free_port(), job, device.type, warmup, out), nprocs=world, join=True)
        return dict(out)


def bench_gang(models: list[str], settings: Settings, ranks: int) -> list[dict]:
    device = settings.device
    if device.type == "cuda" and torch.cuda.device_count() < ranks:
        raise SystemExit(f"--ranks {ranks}: this machine has {torch.cuda.device_count()} GPUs")
    rows = []
    for model in models:
        batch = 256 if device.type == "cuda" else 32
        iterations, warmup = (30, 10) if settings.quick else (60, 20)
        job = _job(model, batch, iterations, device)
        one = _measure(job, 1, device, warmup)
        many = _measure(job, ranks, device, warmup)
        ips = lambda r: batch * r["steps"] / r["seconds"]  # noqa: E731
        expected = f"ddp-{'nccl' if device.type == 'cuda' else 'gloo'}"
        rows.append({
            "model": model, "batch_size": batch, "ranks": ranks, "device": str(device),
            "images_per_s_one_rank": ips(one), "images_per_s_n_ranks": ips(many),
            "ratio_n_vs_one": ips(many) / ips(one), "path": many["path"],
            "fell_back": many["path"] != expected, "cpu_threads_per_rank": 1 if device.type == "cpu" else None,
            "cores": os.cpu_count(),
        })
    return rows
