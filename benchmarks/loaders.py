"""Data-loader throughput on the same generated data: the device-resident loader, torchvision's
DataLoader and FFCV, for CIFAR-sized images (pad-crop + flip) and for ImageNet-style JPEG files
(random-resized crop + flip at a low training resolution, as ffcv-imagenet trains: our `imagenet`
loader, which decodes on the benchmark's device, and FFCV's JPEG pipeline).

Each loader delivers normalised float batches on the benchmark's device; images/s is the median
over timed passes after one warmup batch. A loader that fails here is reported, not hidden.
"""
from __future__ import annotations

import os
import tempfile
import time
import traceback
from typing import Callable, Iterator

import numpy as np
import torch

from benchmarks.common import Settings, median, sync
from trainers.data.sources import open_data
from trainers.data.export import write_image_folder
from trainers.data.beton_writer import write_beton
from trainers.jobs import DataConfig

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _rate(batches: Callable[[], Iterator], count: int, batch_size: int, device: torch.device, passes: int) -> float:
    rates = []
    for _ in range(passes):
        it = batches()
        next(it)  # warmup: workers start, buffers allocate
        sync(device)
        t = time.perf_counter()
        for _ in range(count):
            x, _ = next(it)
        sync(device)
        rates.append(count * batch_size / (time.perf_counter() - t))
        del it
    return median(rates)


def _forever(make: Callable[[], Iterator]) -> Iterator:
    while True:
        yield from make()


def _torchvision_cifar(images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device, workers: int):
    from torchvision.transforms import v2

    transform = v2.Compose([
        v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])

    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, i: int):
            return transform(images[i]), int(labels[i])

    cuda = device.type == "cuda"

    def make():
        loader = torch.utils.data.DataLoader(Images(), batch_size=batch_size, shuffle=True, drop_last=True,
                                             num_workers=workers, pin_memory=cuda, persistent_workers=False,
                                             prefetch_factor=4 if workers else None)
        for x, y in loader:
            yield x.to(device, non_blocking=cuda), y.to(device, non_blocking=cuda)

    return lambda: _forever(make)


def _ffcv_cifar(beton: str, batch_size: int, device: torch.device, workers: int):
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import Convert, RandomHorizontalFlip, RandomTranslate, Squeeze, ToDevice, ToTensor, ToTorchImage

    cuda = device.type == "cuda"
    mean = torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1) * 255
    inv_std = 1 / (torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1) * 255)
    loader = Loader(
        beton, batch_size=batch_size, num_workers=workers, order=OrderOption.RANDOM, drop_last=True, os_cache=True,
        pipelines={
            "image": [SimpleRGBImageDecoder(), RandomHorizontalFlip(), RandomTranslate(padding=4), ToTensor(),
                      ToDevice(device, non_blocking=cuda), ToTorchImage(), Convert(torch.float32)],
            "label": [IntDecoder(), ToTensor(), Squeeze(), ToDevice(device, non_blocking=cuda)],
        },
    )

    def make():
        for x, y in loader:
            yield (x - mean) * inv_std, y

    return lambda: _forever(make)


def bench_loaders(settings: Settings) -> list[dict]:
    device = settings.device
    workers = 8 if settings.cuda else 1
    rows: list[dict] = []

    def record(dataset: str, loader: str, fn: Callable[[], float], note: str = "") -> None:
        try:
            rows.append({"dataset": dataset, "loader": loader, "images_per_s": fn(), "note": note})
        except Exception as e:  # a broken loader is a result to report
            rows.append({"dataset": dataset, "loader": loader, "images_per_s": None,
                         "note": f"FAILED: {type(e).__name__}: {e}".splitlines()[0][:200]})
            traceback.print_exc()

    passes = 1 if settings.quick else 3
    with tempfile.TemporaryDirectory(prefix="lth-bench-data-") as tmp:
        # ---- CIFAR-sized: 32 px, pad-4 crop + flip --------------------------------------------
        n = 50_000 if settings.cuda else (2048 if settings.quick else 4096)
        B = 512
        count = max(4, n // B - 2)
        cfg = DataConfig(name="synthetic", image_size=32, num_classes=10, num_train=n, num_test=256, augment=True)
        resident = open_data(cfg, device, {})
        record("cifar-size 32px", "device-resident (ours)", lambda: _rate(lambda: resident.train_stream(0, B, 0), count, B, device, passes))
        cpu = open_data(cfg, torch.device("cpu"), {})
        record("cifar-size 32px", f"torchvision DataLoader ({workers} workers)",
               lambda: _rate(_torchvision_cifar(cpu.train_x, cpu.train_y, B, device, workers), count, B, device, passes))
        beton_dir = os.path.join(tmp, "cifar")
        record("cifar-size 32px", f"FFCV Loader, raw pixels ({workers} workers)",
               lambda: (write_beton(cfg, beton_dir, num_workers=workers),
                        _rate(_ffcv_cifar(os.path.join(beton_dir, "train.beton"), B, device, workers), count, B, device, passes))[1])

        # ---- ImageNet-style JPEG files, random-resized crop + flip at low resolution ------------
        side = 160 if settings.cuda else 64
        per_class = 400 if settings.cuda else (24 if settings.quick else 48)
        classes = 10
        folder = write_image_folder(os.path.join(tmp, "folder"), num_classes=classes, per_class_train=per_class,
                                    per_class_val=2, image_size=side * 5 // 4, image_format="jpeg")
        Bi = 256 if settings.cuda else 64
        ni = classes * per_class
        count_i = max(3, ni // Bi - 2)
        folder_cfg = DataConfig(name="imagenet", root=str(folder), image_size=side, augment=True)
        record(f"jpeg files {side}px", f"ours: reader threads + decode_jpeg and crop on {device.type} ({workers} readers)",
               lambda: _rate(lambda: open_data(folder_cfg, device, {}, num_workers=workers).train_stream(0, Bi, 0),
                             count_i, Bi, device, passes))
        jpeg_dir = os.path.join(tmp, "ffcv_jpeg")
        ffcv_cfg = DataConfig(name="ffcv_imagenet", root=jpeg_dir, image_size=side, augment=True)
        record(f"jpeg files {side}px", f"FFCV Loader, JPEG pipeline ({workers} workers)",
               lambda: (write_beton(DataConfig(name="imagenet", root=str(folder), image_size=side), jpeg_dir,
                                    write_mode="jpg", num_workers=workers),
                        _rate(lambda: open_data(ffcv_cfg, device, {}, num_workers=workers).train_stream(0, Bi, 0),
                              count_i, Bi, device, passes))[1])
    for r in rows:
        r["images"] = n if r["dataset"].startswith("cifar") else ni
    np.random.seed(0)  # ffcv's numba code draws from numpy's global RNG; leave it in a known state
    return rows
