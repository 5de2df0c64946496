"""ImageNet end to end: our trainer on a folder of JPEG files beside the same model on
device-resident data, in one process.

    python -m benchmarks.run --sections imagenet_e2e --device cuda --models resnet50,resnet18

The folder is generated: photographs-like JPEGs of about 400x350 pixels and 93 kB (ImageNet's
averages), 10 classes. Both runs call `trainers.train.train` (bf16 autocast and channels_last on
CUDA, random-resized crop + flip on the files, no augmentation on the resident images) with no
evaluation between the timed iterations; the clock is the loop itself: the time at which it takes
each training batch from the data bundle. Rates are the median over windows of `window`
iterations after `warmup` iterations (cuDNN autotuning, compile, the loader filling its queue),
the two runs interleaved `repeats` times.
In steady state the host runs at most a few steps ahead of the device (the CUDA launch queue),
so over a window of 100 iterations the clock is the device's pace to within that margin.

The row names the path the run took: decode device, reader threads, and how many files each
decoder took. Decoding any generated file other than in the device's batched call (on the CPU,
one by one, or not at all) is a fallback: the section reports it and `benchmarks.run` exits 1.
"""
from __future__ import annotations

import dataclasses
import io
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.common import Settings, median
from trainers.data.sources import open_data
from trainers.data.bundle import WHOLE, DataBundle, Shard
from trainers.data.imagenet import FolderBundle
from trainers.data.workers import available_cpus
from trainers.jobs import DataConfig, OptimizerConfig, TrainConfig, TrainJob, TrainPaths
from trainers.runtime import Runtime
from trainers.train import train

NO_CHECKPOINTS = 1e12
NOISE_SIGMA = 30.0  # texture: with quality 90 a 400x350 image encodes to about 93 kB (measured)


@dataclass(frozen=True)
class E2ECase:
    model: str
    image_size: int  # training crop side
    batch_size: int
    files: int  # training JPEGs in the generated folder
    warmup: int  # iterations before the first timed window
    window: int
    windows: int


def default_e2e_case(model: str, settings: Settings) -> E2ECase:
    if settings.cuda:
        return E2ECase(model, 224, 256, 8_200, warmup=30, window=100 if not settings.quick else 40,
                       windows=4 if not settings.quick else 2)
    # A shared 2-core CPU: a small crop and few steps; still full-size files to decode.
    return E2ECase(model, 64, 16, 96 if settings.quick else 192, warmup=3, window=3, windows=2 if settings.quick else 3)


# ---- the generated folder ------------------------------------------------------------------------


def _one_jpeg(args: tuple[str, int]) -> int:
    path, seed = args
    g = torch.Generator().manual_seed(seed)
    # ImageNet-like sizes: mean about 400x350, landscape and portrait.
    w = int(torch.randint(333, 468, (1,), generator=g))
    h = int(torch.randint(300, 401, (1,), generator=g))
    coarse = torch.rand(1, 3, h // 16 + 1, w // 16 + 1, generator=g) * 255
    base = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]
    img = (base + torch.randn(3, h, w, generator=g) * NOISE_SIGMA).clamp(0, 255).to(torch.uint8)
    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=90)
    Path(path).write_bytes(buf.getvalue())
    return len(buf.getvalue())


def write_jpeg_folder(root: str, train_files: int, val_files: int, classes: int = 10, workers: int = 1) -> dict:
    """root/train/<class>/*.JPEG and root/val/<class>/*.JPEG; returns the files' count and mean size."""
    jobs = []
    for split, count in (("train", train_files), ("val", val_files)):
        for i in range(count):
            folder = Path(root, split, f"n{i % classes:08d}")
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((str(folder / f"{split}_{i:08d}.JPEG"), i + (0 if split == "train" else 10**7)))
    if workers > 1:
        # spawn: the parent has usually initialised CUDA and torch's thread pools, which fork breaks.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            sizes = list(pool.map(_one_jpeg, jobs, chunksize=64))
    else:
        sizes = [_one_jpeg(j) for j in jobs]
    return {"files": len(sizes), "mean_kb": sum(sizes) / len(sizes) / 1e3}


# ---- the clock: when the loop takes each batch ---------------------------------------------------


class _StampedBundle(DataBundle):
    """The bundle train() gets from the data cache, recording when each training batch is taken."""

    def __init__(self, inner: DataBundle):
        self.inner, self.info, self.stamps = inner, inner.info, []

    def train_stream(self, data_seed: int, batch_size: int, start_iter: int, shard: Shard = WHOLE) -> Iterator:
        for batch in self.inner.train_stream(data_seed, batch_size, start_iter, shard):
            self.stamps.append(time.perf_counter())
            yield batch

    def eval_batches(self, split: str, batch_size: int, max_examples: int | None = None,
                     shard: Shard = WHOLE) -> Iterator:
        return self.inner.eval_batches(split, batch_size, max_examples, shard)


def _timed_run(cfg: TrainConfig, rt: Runtime, case: E2ECase, out_dir: str) -> tuple[list[float], DataBundle]:
    cache: dict = {}
    inner = open_data(cfg.data, rt.device, cache, num_workers=rt.loader_workers())
    stamped = _StampedBundle(inner)
    for key, value in list(cache.items()):
        if value is inner:
            cache[key] = stamped
    job = TrainJob(train=cfg, init_seed=0, data_seed=0)
    train(job, TrainPaths(out_dir=out_dir, checkpoint_every_seconds=NO_CHECKPOINTS), dataclasses.replace(rt, data_cache=cache))
    s = stamped.stamps
    rates = []
    for w in range(case.windows):
        lo = case.warmup + w * case.window
        rates.append(case.window * case.batch_size / (s[lo + case.window] - s[lo]))
    return rates, inner


def _config(case: E2ECase, data: DataConfig, compile: bool) -> TrainConfig:
    iterations = case.warmup + case.window * case.windows + 2  # the last stamps are inside the loop
    return TrainConfig(model=case.model, data=data, iterations=iterations, batch_size=case.batch_size,
                       optimizer=OptimizerConfig(lr=0.1, momentum=0.9, weight_decay=5e-5), eval_every=0,
                       eval_train_examples=case.batch_size, compile=compile)


def bench_imagenet_e2e(models: list[str], settings: Settings, cpus: int | None = None, compile: bool = False,
                       data_dir: str | None = None) -> list[dict]:
    cpus = cpus or available_cpus()
    repeats = settings.repeats or (1 if settings.quick else 2)
    rt = Runtime(device=settings.device, cpus=cpus)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lth-bench-e2e-") as tmp:
        root = data_dir or os.path.join(tmp, "imagenet")
        n_files = max(default_e2e_case(m, settings).files for m in models)
        if not Path(root, "train").is_dir():
            made = write_jpeg_folder(root, n_files, 2 * 10, workers=min(16, cpus))
        else:
            made = {"files": None, "mean_kb": None}
        for m in models:
            case = default_e2e_case(m, settings)
            files_cfg = DataConfig(name="imagenet", root=root, image_size=case.image_size, augment=True, num_train=case.files)
            resident_cfg = DataConfig(name="synthetic", image_size=case.image_size, num_classes=10,
                                      num_train=case.batch_size * 8, num_test=case.batch_size, augment=False)
            resident, e2e = [], []
            for r in range(repeats):  # interleaved, so a slow phase of the machine hits both
                resident += _timed_run(_config(case, resident_cfg, compile), rt, case, os.path.join(tmp, f"{m}-resident{r}"))[0]
                rates, bundle = _timed_run(_config(case, files_cfg, compile), rt, case, os.path.join(tmp, f"{m}-files{r}"))
                e2e += rates
            assert isinstance(bundle, FolderBundle)
            stats = bundle.stats.as_dict()
            # Generated files are all colour JPEGs: any other decoder is a fallback. A real folder
            # (--data-dir) may hold a few CMYK or PNG files (ImageNet: about 23 in 1.28 M): 1% of them.
            others = stats["single"] + stats["cpu"]
            allowed = 0 if data_dir is None else 0.01 * (others + stats["batched"])
            fell_back = stats["failed"] > 0 or stats["batched"] == 0 or others > allowed
            r_e2e, r_res = median(e2e), median(resident)
            rows.append({
                "model": m, "image_size": case.image_size, "batch_size": case.batch_size, "files": case.files,
                "mean_file_kb": made["mean_kb"], "compile": compile, "cpus": cpus, "repeats": repeats,
                "path": f"decode on {stats['device']} (batched decode_jpeg), {bundle.num_workers} reader threads, "
                        f"{bundle.depth} batches ahead",
                "decoded": {k: stats[k] for k in ("batched", "single", "cpu", "failed")},
                "fell_back": fell_back,
                "images_per_s_e2e": r_e2e, "images_per_s_resident": r_res, "ratio_e2e_vs_resident": r_e2e / r_res,
                "samples": {"e2e": e2e, "resident": resident},
            })
    return rows
