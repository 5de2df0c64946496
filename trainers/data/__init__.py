"""Data sets for training: a registry of sources, and the three entry points the training loop
and the planner call.

- `describe(cfg)`: shape and counts without loading (the planner's machine may lack the data);
- `check_available(cfg)`: a cheap check that the data is there, with an error naming the path;
- `open_data(cfg, device, cache)`: the loaded `DataBundle` (training stream, evaluation batches).

Data order and augmentation are a pure function of (data_seed, epoch, position): see order.py.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from trainers.data.bundle import Batch, DataBundle, DataInfo, DataSource
from trainers.data.cifar import CifarSource
from trainers.data.digits import DigitsSource
from trainers.data.ffcv_io import FfcvCifarSource, FfcvImagenetSource
from trainers.data.imagenet import ImageFolderSource
from trainers.data.resolution import check_resolution, train_resolution
from trainers.data.synthetic import SyntheticSource
from trainers.jobs import DataConfig

__all__ = ["DATASETS", "Batch", "DataBundle", "DataInfo", "DataSource", "check_available", "describe", "open_data", "train_resolution", "valid_names"]

DATASETS: dict[str, Callable[[DataConfig], DataSource]] = {
    "digits": DigitsSource,
    "synthetic": SyntheticSource,
    "cifar10": CifarSource,
    "cifar100": CifarSource,
    "imagenet": ImageFolderSource,
    "ffcv_cifar": FfcvCifarSource,
    "ffcv_imagenet": FfcvImagenetSource,
}


def valid_names() -> str:
    return ", ".join(sorted(DATASETS))


def source(cfg: DataConfig) -> DataSource:
    if not isinstance(cfg, DataConfig):
        raise TypeError(f"expected a DataConfig, got {type(cfg).__name__}")
    if cfg.name not in DATASETS:
        raise ValueError(f"data.name: unknown data set {cfg.name!r}; valid names: {valid_names()}")
    check_resolution(cfg)
    return DATASETS[cfg.name](cfg)


def describe(cfg: DataConfig) -> DataInfo:
    return source(cfg).describe()


def check_available(cfg: DataConfig) -> None:
    source(cfg).check()


def open_data(cfg: DataConfig, device: torch.device, cache: dict[Any, Any] | None = None, *,
              num_workers: int | None = None) -> DataBundle:
    """The loaded data set on `device`, from `cache` when an equal config was opened there before.

    num_workers: decoding workers of file-based sources (imagenet, ffcv_*); it never changes
    the batches, only how fast they come.
    """
    device = torch.device(device)
    key = ("trainers.data", cfg, device.type, device.index)
    if cache is not None and key in cache:
        return cache[key]
    bundle = source(cfg).open(device, num_workers=num_workers)
    if cache is not None:
        cache[key] = bundle
    return bundle
