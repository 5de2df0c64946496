"""Early-bird tickets (You et al., ICLR 2020): detecting when the channel mask stops changing.

As the reference code (GATECH-EIC/Early-Bird-Tickets, main.py) does it, which is stricter than
the paper's wording, and named so:
- mask: the BatchNorm scales |gamma| of every BatchNorm layer concatenated in module order (one
  global ranking); t = sorted(|gamma|)[int(C * p)] and a channel is kept when |gamma| > t
  (strict: channels tied at t go too, so int(C * p) + 1 or more are removed);
- distance: normalised Hamming distance, 1 - #{m_i == m_j} / C;
- detector: at the start of each epoch the newest mask is pushed on a FIFO of `queue` masks;
  once the FIFO is full, a ticket is detected when the newest mask is within `threshold` of
  EVERY older mask in it (so never before `queue - 1` epochs of training).
The strict threshold is expressed through `trainers.pruning.remove_smallest` (the count is the
number of scales at or below t), so this method ends in the one selector like every other.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from trainers.pruning import remove_smallest


def bn_scales(model: nn.Module) -> torch.Tensor:
    """|gamma| of every BatchNorm layer, concatenated in module order (CPU, float64)."""
    parts = [m.weight.detach().abs().to("cpu", torch.float64).reshape(-1) for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    if not parts:
        raise ValueError("early-bird channel masks need BatchNorm layers; the model has none")
    return torch.cat(parts)


def reference_mask(scales: torch.Tensor, fraction: float) -> torch.Tensor:
    """Kept channels: |gamma| > sorted(|gamma|)[int(C * fraction)] (the reference's rule)."""
    scales = scales.detach().abs().to(torch.float64).reshape(-1)
    c = scales.numel()
    k = int(c * fraction)
    if not 0 <= k < c:
        raise ValueError(f"early_bird.fractions: {fraction} of {c} channels leaves none")
    t = torch.sort(scales).values[k]
    count = int((scales <= t).count_nonzero())
    return remove_smallest(scales.clone(), torch.ones(c, dtype=torch.bool), count)


def mask_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normalised Hamming distance between two flat bool masks of one length."""
    if a.shape != b.shape:
        raise ValueError(f"masks of different shapes: {tuple(a.shape)} and {tuple(b.shape)}")
    return 1.0 - int((a == b).count_nonzero()) / a.numel()


@dataclass
class Detector:
    """One fraction's detector; `push` once per epoch start, in order."""

    fraction: float
    queue: int = 5
    threshold: float = 0.1
    masks: deque = field(default_factory=deque)
    detected_at: int | None = None  # the epoch index of the push that fired (trained that many epochs)
    distances: list[float] | None = None  # newest vs each older mask at detection, oldest first

    def push(self, epoch: int, mask: torch.Tensor) -> bool:
        """Record the mask of the start of `epoch`; True the first time a ticket is detected."""
        self.masks.append(mask.clone())
        if len(self.masks) > self.queue:
            self.masks.popleft()
        if self.detected_at is not None or len(self.masks) < self.queue:
            return False
        newest = self.masks[-1]
        dists = [mask_distance(newest, old) for old in list(self.masks)[:-1]]
        if all(d <= self.threshold for d in dists):
            self.detected_at, self.distances = epoch, dists
            return True
        return False


def distance_matrix(masks: list[torch.Tensor]) -> list[list[float]]:
    """Pairwise distances of the per-epoch masks (the paper's figure)."""
    return [[mask_distance(a, b) for b in masks] for a in masks]
