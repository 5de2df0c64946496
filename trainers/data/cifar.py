"""CIFAR-10 / CIFAR-100 from torchvision's on-disk format (the python pickle batches).

torchvision.datasets.CIFAR10(download=False) refuses any file whose md5 differs from the
official archive's, which rules out the files export.py writes for tests and benchmarks, so
the pickles are read here directly: same files, same keys ("data": uint8 N x 3072 in CHW
order, "labels" / "fine_labels").
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from trainers.data import order
from trainers.data.bundle import DataBundle, DataSource
from trainers.data.catalog import CIFAR_LAYOUTS as LAYOUTS, CIFAR_SHAPE as SHAPE, CifarLayout, DataInfo
from trainers.data.catalog import cifar_batches_dir as batches_dir
from trainers.data.resident import ResidentBundle, standard_augmentation
from trainers.jobs import DataConfig

def _get(entry: dict, key: str, path: Path):
    # Real CIFAR pickles are Python 2 pickles: read with latin1 they have str keys, with
    # encoding="bytes" bytes keys; accept both.
    for k in (key, key.encode()):
        if k in entry:
            return entry[k]
    raise ValueError(f"{path}: not a CIFAR batch file (no {key!r} entry; keys: {sorted(map(str, entry))})")


def read_batches(folder: Path, files: tuple[str, ...], layout: CifarLayout) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for name in files:
        path = folder / name
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
        except (pickle.UnpicklingError, EOFError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: unreadable CIFAR batch file ({e})") from e
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: not a CIFAR batch file (a {type(entry).__name__}, not a dict)")
        data = np.asarray(_get(entry, "data", path))
        labels = np.asarray(_get(entry, layout.label_key, path), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise ValueError(f"{path}: expected uint8 data of shape (N, 3072) and N labels, got {data.dtype} {data.shape} and {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= layout.num_classes):
            raise ValueError(f"{path}: labels outside 0..{layout.num_classes - 1}")
        xs.append(torch.from_numpy(data.reshape(-1, *SHAPE).copy()))
        ys.append(torch.from_numpy(labels))
    return torch.cat(xs), torch.cat(ys)


def subset(x: Tensor, y: Tensor, wanted: int | None, seed: int, split: str) -> tuple[Tensor, Tensor]:
    idx = order.data_subset(len(y), wanted, seed, split)
    return (x, y) if idx is None else (x[idx], y[idx])


class CifarSource(DataSource):
    def __init__(self, cfg: DataConfig):
        super().__init__(cfg)
        self.layout = LAYOUTS[cfg.name]

    def _load(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        folder = batches_dir(self.cfg.root, self.layout)
        train = subset(*read_batches(folder, self.layout.train_files, self.layout), self.cfg.num_train, self.cfg.seed, "train")
        test = subset(*read_batches(folder, self.layout.test_files, self.layout), self.cfg.num_test, self.cfg.seed, "test")
        return train, test

    def open(self, device: torch.device, *, num_workers: int | None = None) -> DataBundle:
        train, test = self._load()
        info = DataInfo(SHAPE, self.layout.num_classes, len(train[1]), len(test[1]))
        return ResidentBundle(
            info, train, test, device,
            augmentation=standard_augmentation(32) if self.cfg.augment else None,
            mean=self.layout.mean, std=self.layout.std,
        )


def counted_info(cfg: DataConfig) -> DataInfo:
    """The DataInfo of the batch files under cfg.root, counted (catalog.describe calls this)."""
    train, test = CifarSource(cfg)._load()
    return DataInfo(SHAPE, LAYOUTS[cfg.name].num_classes, len(train[1]), len(test[1]))
