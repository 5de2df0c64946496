"""CIFAR-10 / CIFAR-100 from torchvision's on-disk format (cifar_files.py reads the pickles),
held on the device (resident.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from trainers.data import cifar_files, order
from trainers.data.bundle import DataBundle, DataSource
from trainers.data.catalog import CIFAR_LAYOUTS as LAYOUTS, CIFAR_SHAPE as SHAPE, CifarLayout, DataInfo
from trainers.data.catalog import cifar_batches_dir as batches_dir
from trainers.data.resident import ResidentBundle, standard_augmentation
from trainers.jobs import DataConfig

def read_batches(folder: Path, files: tuple[str, ...], layout: CifarLayout) -> tuple[Tensor, Tensor]:
    x, y = cifar_files.read_batches(folder, files, layout)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)


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
