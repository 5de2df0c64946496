"""The data order: every random draw of a data-order stream as a pure function of
(data_seed, epoch, position).

Seeds are mixed with splitmix64 (stable across Python processes and versions, unlike hash())
and drawn from CPU `torch.Generator`s, so a CPU run and a GPU run see the same permutation and
the same augmentation parameters. Resuming at iteration i recomputes epoch i // ipe's draws and
indexes them by position, so it yields exactly the batches the uninterrupted stream yields.
"""
from __future__ import annotations

import torch

from trainers.data.catalog import subset_size

_MASK64 = (1 << 64) - 1

# Stream labels keep the draws of different purposes independent of each other.
STREAM_PERMUTATION = 1
STREAM_AUGMENTATION = 2
STREAM_SAMPLE = 3  # per-example augmentation seeds of file-based loaders
STREAM_EVAL_SUBSET = 4  # the fixed training subset used for train metrics
STREAM_DATA_SUBSET = 5  # cfg.num_train / num_test subsets of file data sets
STREAM_SYNTHETIC = 6  # synthetic data generation (cfg.seed)
STREAM_SPLIT = 7  # fixed train/test split of small data sets (digits)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix(*values: int) -> int:
    """A stable 63-bit seed from a tuple of integers (negative values allowed)."""
    h = 0x1234_5678_9ABC_DEF0
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h >> 1  # torch.Generator.manual_seed wants a value that fits in int64 comfortably


def generator(*values: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(mix(*values))


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order of the n training examples in `epoch` of data-order stream `seed` (CPU int64)."""
    return torch.randperm(n, generator=generator(STREAM_PERMUTATION, seed, epoch))


def augmentation_generator(seed: int, epoch: int) -> torch.Generator:
    """Source of the epoch's augmentation parameters, drawn for all positions at once."""
    return generator(STREAM_AUGMENTATION, seed, epoch)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """Seed of the augmentation of the example at `position` of `epoch` (file-based loaders)."""
    return mix(STREAM_SAMPLE, seed, epoch, position)


def eval_train_subset(n: int, max_examples: int | None) -> torch.Tensor:
    """The fixed training subset used for train metrics: the same for every data-order seed."""
    if max_examples is None or max_examples >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=generator(STREAM_EVAL_SUBSET))[:max_examples]


def data_subset(n_available: int, n_wanted: int | None, seed: int, split: str) -> torch.Tensor | None:
    """Sorted indices of a fixed subset of n_wanted examples (None: use them all)."""
    if subset_size(n_available, n_wanted, split) == n_available:
        return None
    g = generator(STREAM_DATA_SUBSET, seed, 0 if split == "train" else 1)
    return torch.randperm(n_available, generator=g)[:n_wanted].sort().values


STREAM_PRUNE_BATCH = 8  # the scoring batch of pruning at initialization (trainers/methods/job.py)


def scoring_stream_seed(data_seed: int, k: int) -> int:
    """The data-order seed of the stream the scoring batch of a job starting at k is drawn from:
    independent of the training stream of the same data seed."""
    return mix(STREAM_PRUNE_BATCH, data_seed, k)
