"""One job on N ranks against the same job on one rank, same device type, our trainer; and the
two BatchNorms that synchronise over a gang, side by side.

Both runs call `trainers.train.train` on the same global batch; the N-rank run is N processes in
a torch.distributed group (gloo on CPU, NCCL on CUDA with one GPU per rank). Steady-state rate:
global images per second between iteration `warmup` and the end, timed on rank 0 through
`Runtime.on_step` (start-up, data loading and the final evaluation excluded).

Two inputs (`--gang-input`): `synthetic` (device-resident: each rank slices the batch in memory)
and `jpeg` (the JPEG folder loader on generated ImageNet-like files: each rank reads, decodes and
crops its slice of the batch plan only). For `jpeg` every rank counts the images its loader
decoded per training step (the loader's own decode calls), which falls as 1/N: B on one rank,
the rank's slice `rank_slice(B, r, N)` on N. The row names the path that ran (backend, DDP, the
decode path) and fails when it is not the one asked for: no DDP on the expected backend, or a
rank that decoded more than its slice (the whole batch: the unsharded path).

BatchNorm (CUDA only: SyncBatchNorm refuses to run on the CPU): a plain DDP loop of the model on
synthetic data, N GPUs, with nn.SyncBatchNorm (what `bn_sync: global` uses on CUDA) and with the
project's all-reduce BatchNorm (`trainers.distributed.GlobalBatchNorm`), each with DDP's
`broadcast_buffers` on (the default) and off (redundant where BN is synchronised: every rank
already holds the same running statistics), as images/s and the ratio to SyncBatchNorm with
buffers broadcast. On a CPU run the rows are pending, with the command that measures them.

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

INPUTS = ("synthetic", "jpeg")
BN_VARIANTS = (("sync", True), ("sync", False), ("all_reduce", True), ("all_reduce", False))
BN_COMMAND = "python -m benchmarks.run --sections gang --device cuda --models resnet50 --ranks 8"


def _job(model: str, batch_size: int, iterations: int, device: torch.device, source: str, root: str | None):
    from trainers.jobs import DataConfig, OptimizerConfig, TrainConfig, TrainJob

    side = 224 if model.startswith("resnet") else 32
    if source == "jpeg":
        # full-size files (about 400 x 350), a small crop on the CPU (as imagenet_e2e's CPU case)
        side = side if device.type == "cuda" else 64
        data = DataConfig(name="imagenet", root=root, image_size=side, num_test=batch_size)
    else:
        data = DataConfig(name="synthetic", image_size=side, num_classes=10 if side == 32 else 1000,
                          num_train=batch_size * 4, num_test=batch_size, augment=False)
    cfg = TrainConfig(model=model, data=data, iterations=iterations, batch_size=batch_size,
                      optimizer=OptimizerConfig(name="sgd", lr=0.01, momentum=0.9), eval_train_examples=batch_size,
                      channels_last=device.type == "cuda", bn_sync="global")
    return TrainJob(train=cfg, init_seed=0, data_seed=0)


def _count_decodes(job, device: torch.device, cache: dict, workers: int):
    """Opens the job's data into `cache` (train() then takes it from there); returns the bundle
    and the list each training decode call of its loader appends its image count to (None:
    resident data, nothing decoded)."""
    from trainers.data.sources import open_data

    bundle = open_data(job.train.data, device, cache, num_workers=workers)
    if job.train.data.name != "imagenet":
        return bundle, None
    counts: list[int] = []
    decode = bundle.train.decode

    def counted(plan, contents):
        if plan.seeds and plan.seeds[0] is not None:  # a training plan (evaluation's carry no crop seeds)
            counts.append(len(plan.indices))
        return decode(plan, contents)

    bundle.train.decode = counted
    return bundle, counts


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

    # CUDA: the node's CPUs shared by its ranks, as a gang's resources.cpus / N; CPU ranks: one
    # reader thread each (loader_workers(2)) on this small machine
    from trainers.data.workers import available_cpus

    cpus = max(1, available_cpus() // world) if device.type == "cuda" else 2
    rt = Runtime(device=device, rank=rank, world_size=world, on_step=on_step, cpus=cpus)
    bundle, counts = _count_decodes(job, device, rt.data_cache, rt.loader_workers())
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
    if counts is not None:
        steps = job.train.iterations
        # the decode calls of the trained steps (the prefetcher may have decoded a few ahead)
        out[f"decoded_{rank}"] = counts[:steps]
        if rank == 0:
            stats = bundle.stats.as_dict()
            out["decode_path"] = f"decode on {stats['device']} ({'batched' if stats['batched'] else 'per file'})"
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


def _decoded(result: dict, world: int) -> list[float] | None:
    """Images each rank decoded per training step (the mean over the trained steps)."""
    per_rank = [result.get(f"decoded_{r}") for r in range(world)]
    if any(c is None for c in per_rank):
        return None
    return [sum(c) / len(c) for c in per_rank]


def bench_gang(models: list[str], settings: Settings, ranks: int, inputs: tuple[str, ...] = INPUTS) -> list[dict]:
    from trainers import distributed

    device = settings.device
    if device.type == "cuda" and torch.cuda.device_count() < ranks:
        raise SystemExit(f"--ranks {ranks}: this machine has {torch.cuda.device_count()} GPUs")
    rows = []
    batch = 256 if device.type == "cuda" else 32
    iterations, warmup = (30, 10) if settings.quick else (60, 20)
    with tempfile.TemporaryDirectory() as tmp:
        root = None
        if "jpeg" in inputs:
            from benchmarks.imagenet_e2e import write_jpeg_folder

            root = os.path.join(tmp, "imagenet")
            # enough files that no epoch ends inside the timed steps' first pass (full-size JPEGs)
            write_jpeg_folder(root, train_files=batch * (8 if device.type == "cuda" else 4), val_files=batch,
                              workers=max(1, min(8, (os.cpu_count() or 1) - 1)))
        for model in models:
            for source in inputs:
                job = _job(model, batch, iterations, device, source, root)
                one = _measure(job, 1, device, warmup)
                many = _measure(job, ranks, device, warmup)
                ips = lambda r: batch * r["steps"] / r["seconds"]  # noqa: E731
                expected = f"ddp-{'nccl' if device.type == 'cuda' else 'gloo'}"
                decoded_one, decoded_n = _decoded(one, 1), _decoded(many, ranks)
                slices = [hi - lo for lo, hi in (distributed.rank_slice(batch, r, ranks) for r in range(ranks))]
                sharded = decoded_n is None or decoded_n == [float(s) for s in slices]
                path = many["path"] + (f", {many['decode_path']}, each rank decodes its slice" if source == "jpeg" else
                                       ", resident data sliced in memory")
                rows.append({
                    "model": model, "input": source, "batch_size": batch, "ranks": ranks, "device": str(device),
                    "images_per_s_one_rank": ips(one), "images_per_s_n_ranks": ips(many),
                    "ratio_n_vs_one": ips(many) / ips(one), "path": path,
                    "decoded_per_step_one_rank": decoded_one[0] if decoded_one else None,
                    "decoded_per_rank_per_step": decoded_n,
                    "decoded_ratio_n_vs_one": (max(decoded_n) / decoded_one[0]) if decoded_n else None,
                    "fell_back": many["path"] != expected or not sharded,
                    "cpu_threads_per_rank": 1 if device.type == "cpu" else None, "cores": os.cpu_count(),
                })
    return rows


# ---- BatchNorm over the gang: SyncBatchNorm vs the all-reduce BatchNorm ----------------------------


def _bn_rank(rank: int, world: int, port: int, model_name: str, batch: int, module: str, broadcast: bool,
             warmup: int, steps: int, out: dict) -> None:
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from trainers import distributed
    from trainers.models import build_model

    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    distributed.join(distributed.GangMember(rank, world, "127.0.0.1", port, 600), device)
    try:
        model = build_model(model_name, (3, 224, 224), 1000, seed=0).to(device, memory_format=torch.channels_last)
        # "all_reduce": the module bn_sync global uses where SyncBatchNorm cannot run (the CPU)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if module == "sync" else distributed._to_global(model)
        ddp = DistributedDataParallel(model, device_ids=[rank], broadcast_buffers=broadcast)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, fused=True)
        per_rank = batch // world
        g = torch.Generator(device=device).manual_seed(rank)
        x = torch.randn(per_rank, 3, 224, 224, device=device, generator=g).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 1000, (per_rank,), device=device, generator=g)
        t0 = 0.0
        for it in range(warmup + steps):
            if it == warmup:
                torch.cuda.synchronize(device)
                dist.barrier()
                t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(ddp(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        torch.cuda.synchronize(device)
        if rank == 0:
            out["seconds"] = time.perf_counter() - t0
    finally:
        distributed.leave()


def bench_batchnorm(models: list[str], settings: Settings, ranks: int) -> list[dict]:
    """Images/s of each (BatchNorm module, broadcast_buffers) pair; pending rows on the CPU."""
    if settings.device.type != "cuda" or ranks < 2:
        why = "SyncBatchNorm runs on CUDA only" if settings.device.type != "cuda" else "needs 2 or more GPUs"
        return [{"model": m, "module": "sync, all_reduce", "broadcast_buffers": None, "ranks": ranks, "images_per_s": None,
                 "vs_sync_broadcast": None,
                 "pending": f"pending ({why}): {BN_COMMAND.replace('resnet50', m)}"} for m in models]
    from trainers import distributed

    batch = 128 * ranks  # ImageNet's per-GPU batch
    warmup, steps = (5, 10) if settings.quick else (10, 30)
    rows = []
    for m in models:
        rates = {}
        for mod, bb in BN_VARIANTS:
            with mp.Manager() as manager:
                out = manager.dict()
                mp.spawn(_bn_rank, args=(ranks, distributed.free_port(), m, batch, mod, bb, warmup, steps, out),
                         nprocs=ranks, join=True)
                rates[(mod, bb)] = batch * steps / out["seconds"]
        base = rates[("sync", True)]
        rows += [{"model": m, "module": mod, "broadcast_buffers": bb, "ranks": ranks, "images_per_s": rates[(mod, bb)],
                  "vs_sync_broadcast": rates[(mod, bb)] / base, "pending": None} for mod, bb in BN_VARIANTS]
    return rows
