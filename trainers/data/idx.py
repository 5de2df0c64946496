"""The IDX family (Fashion-MNIST, MNIST, KMNIST, EMNIST-digits; idx_files.py reads the files),
held on the device (resident.py) as uint8 (N, 1, H, W).

Normalised by the training split's own mean and std (computed from the files, so no constant
is assumed per data set). No augmentation: the lottery-ticket recipes on MNIST train without
any, so data.augment is ignored here, as it is for digits.
"""
from __future__ import annotations

import torch

from trainers.data.bundle import DataBundle, DataSource
from trainers.data.catalog import IDX_LAYOUTS, DataInfo, idx_files
from trainers.data.cifar import subset
from trainers.data.idx_files import read_split
from trainers.data.resident import ResidentBundle, channel_stats


class IdxSource(DataSource):
    def open(self, device: torch.device, *, num_workers: int | None = None) -> DataBundle:
        layout = IDX_LAYOUTS[self.cfg.name]
        train_x, train_y, test_x, test_y = idx_files(self.cfg)
        splits = []
        for split, (xp, yp) in (("train", (train_x, train_y)), ("test", (test_x, test_y))):
            x, y = read_split(xp, yp, layout.num_classes, layout.transpose)
            wanted = self.cfg.num_train if split == "train" else self.cfg.num_test
            splits.append(subset(torch.from_numpy(x), torch.from_numpy(y), wanted, self.cfg.seed, split))
        (tx, ty), (vx, vy) = splits
        if tx.shape[1:] != vx.shape[1:]:
            raise ValueError(f"{train_x} holds {tuple(tx.shape[2:])} images, {test_x} {tuple(vx.shape[2:])}: not one data set")
        mean, std = channel_stats(tx)
        info = DataInfo(tuple(tx.shape[1:]), layout.num_classes, len(ty), len(vy))
        return ResidentBundle(info, (tx, ty), (vx, vy), device, augmentation=None, mean=mean, std=std)
