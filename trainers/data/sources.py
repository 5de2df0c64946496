"""The data loaders: a registry of sources, and the entry points the training loop calls.

- `describe(cfg)`: shape and counts without loading (ondisk.py; re-exported here);
- `check_available(cfg)`: a cheap check that the data is there, with an error naming the path;
- `open_data(cfg, device, cache)`: the loaded `DataBundle` (training stream, evaluation batches).

Data order and augmentation are a pure function of (data_seed, epoch, position): see order.py.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from trainers.data.bundle import Batch, DataBundle, DataSource
from trainers.data.catalog import DataInfo, check_config, valid_names
from trainers.data.ondisk import check_available, describe
from trainers.data.cifar import CifarSource
from trainers.data.digits import DigitsSource
from trainers.data.ffcv_io import FfcvCifarSource, FfcvImagenetSource
from trainers.data.idx import IdxSource
from trainers.data.catalog import IDX_LAYOUTS
from trainers.data.imagenet import ImageFolderSource
from trainers.data.resolution import train_resolution
from trainers.data.synthetic import SyntheticSource
from trainers.jobs import DataConfig

__all__ = ["DATASETS", "Batch", "DataBundle", "DataInfo", "DataSource", "check_available", "describe", "open_data", "train_resolution", "valid_names"]

# name -> loader; the names are the catalog's (catalog.DESCRIPTIONS), as a test checks.
DATASETS: dict[str, Callable[[DataConfig], DataSource]] = {
    "digits": DigitsSource,
    "synthetic": SyntheticSource,
    "cifar10": CifarSource,
    "cifar100": CifarSource,
    "imagenet": ImageFolderSource,
    "ffcv_cifar": FfcvCifarSource,
    "ffcv_imagenet": FfcvImagenetSource,
    **{name: IdxSource for name in IDX_LAYOUTS},
}


def source(cfg: DataConfig) -> DataSource:
    check_config(cfg)
    return DATASETS[cfg.name](cfg)


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
