"""scikit-learn's 8x8 handwritten digits as flat 64-feature vectors (ships with scikit-learn)."""
from __future__ import annotations

import torch

from trainers.data import order
from trainers.data.bundle import DataBundle, DataSource
from trainers.data.catalog import DIGITS_EXAMPLES as NUM_EXAMPLES, DIGITS_TRAIN as NUM_TRAIN, digits_info
from trainers.data.resident import ResidentBundle


class DigitsSource(DataSource):
    def open(self, device: torch.device, *, num_workers: int | None = None) -> DataBundle:
        from sklearn.datasets import load_digits

        raw = load_digits()
        x = torch.as_tensor(raw.data, dtype=torch.float64) / 16.0
        y = torch.as_tensor(raw.target, dtype=torch.int64)
        if len(y) != NUM_EXAMPLES:
            raise ValueError(f"scikit-learn's digits has {len(y)} examples, expected {NUM_EXAMPLES}")
        # A fixed split, independent of every seed in the config.
        perm = torch.randperm(NUM_EXAMPLES, generator=order.generator(order.STREAM_SPLIT))
        train_idx, test_idx = perm[:NUM_TRAIN], perm[NUM_TRAIN:]
        mean = x[train_idx].mean(0)
        std = x[train_idx].std(0)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant border pixels
        x = ((x - mean) / std).to(torch.float32)
        return ResidentBundle(
            digits_info(self.cfg),
            (x[train_idx], y[train_idx]),
            (x[test_idx], y[test_idx]),
            device,
            augmentation=None,
        )
