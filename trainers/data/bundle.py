"""What every data set looks like to the training loop: `DataInfo`, `DataBundle`, `DataSource`.

A `DataSource` is a configured data set before loading (its description and availability check
are ondisk.py's, which imports the sources, so they are not methods here); `open()` loads it into
a `DataBundle`, which serves training batches as a pure function of (data_seed, iteration) and
deterministic evaluation batches.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from trainers.data.catalog import DataInfo
from trainers.distributed import rank_slice
from trainers.jobs import DataConfig

Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Shard:
    """The part of every global training batch one process trains on: rank `rank` of a gang of
    `world_size` takes the contiguous slice `rank_slice(B, rank, world_size)` of each batch
    (trainers/distributed.py: the one rule the loss weighting relies on too).

    A file-backed stream cuts the batch's *plan* (the example indices and each position's
    augmentation seed, all decided before any file is read) to the slice, so a rank reads,
    decodes and augments only the examples it trains on; the union of the ranks' slices is
    still the whole batch, bit for bit, because an example's image depends on its index and
    its position's seed alone, never on the batch it is decoded with."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"shard: rank {self.rank} outside a gang of {self.world_size}")

    def bounds(self, global_size: int) -> tuple[int, int]:
        return rank_slice(global_size, self.rank, self.world_size)

    def train_bounds(self, batch_size: int) -> tuple[int, int]:
        """bounds() of a training batch, refusing an empty slice (a rank with nothing to train
        on would fail inside DDP or BatchNorm, far from the cause)."""
        if batch_size < self.world_size:
            raise ValueError(f"batch_size {batch_size} is smaller than the {self.world_size} ranks: "
                             f"rank {self.rank} would train on no example")
        return self.bounds(batch_size)

    def eval_bounds(self, count: int, batch_size: int) -> Iterator[tuple[int, int]]:
        """[lo, hi) positions, among the `count` examples evaluated in batches of `batch_size`, of
        this shard's slice of every evaluation batch (the last one may be short). A slice that is
        empty (a short last batch on a large gang) is skipped: evaluation all-reduces only its
        sums at the end, so the ranks need not see the same number of batches."""
        for start in range(0, count, batch_size):
            a, b = self.bounds(min(batch_size, count - start))
            if b > a:
                yield start + a, start + b


WHOLE = Shard()  # one process: the whole batch


class DataBundle(ABC):
    """A loaded data set on one device."""

    info: DataInfo

    def iterations_per_epoch(self, batch_size: int) -> int:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        ipe = self.info.num_train // batch_size
        if ipe < 1:
            raise ValueError(
                f"batch_size {batch_size} is larger than the training set ({self.info.num_train} examples)"
            )
        return ipe

    @abstractmethod
    def train_stream(self, data_seed: int, batch_size: int, start_iter: int, shard: Shard = WHOLE) -> Iterator[Batch]:
        """Training batches of iterations start_iter, start_iter + 1, ... forever (see order.py):
        of each global batch of batch_size examples, the shard's slice (all of it by default)."""

    @abstractmethod
    def eval_batches(self, split: str, batch_size: int, max_examples: int | None = None,
                     shard: Shard = WHOLE) -> Iterator[Batch]:
        """Deterministic, unaugmented batches of the test set or of a fixed training subset: of
        each batch of batch_size examples, the shard's slice (`Shard.eval_bounds`; all of it by
        default). A file-backed source reads and decodes the slice only."""


class DataSource(ABC):
    """A configured data set before loading: the registry's constructors build these."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg

    @abstractmethod
    def open(self, device: torch.device, *, num_workers: int | None = None) -> DataBundle:
        """Load the data set; num_workers only matters to file-based (streaming) sources."""


def check_eval_args(split: str, batch_size: int, max_examples: int | None, num: int, name: str) -> int:
    """Validate eval_batches arguments; returns how many examples to evaluate."""
    if split not in ("test", "train"):
        raise ValueError(f"eval split must be 'test' or 'train', got {split!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be >= 1 or None, got {max_examples}")
    return num if max_examples is None else min(num, max_examples)


def check_stream_args(start_iter: int) -> None:
    if start_iter < 0:
        raise ValueError(f"start_iter must be >= 0, got {start_iter}")


