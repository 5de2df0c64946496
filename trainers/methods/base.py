"""The interface every pruning method shares: what a scorer reads (`ScoreInputs`) and the one
exact-count selection that turns scores into a mask (`select`). Kept apart from the registry
(trainers/methods/__init__.py) so that the scorers import it without importing the registry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainers.pruning import Mask, remove_smallest


@dataclass
class ScoreInputs:
    """What a scorer may read. Only `weights` and `mask` are always set."""

    weights: Mapping[str, torch.Tensor]  # a state_dict (CPU): the weights being scored
    mask: Mask  # the prunable tensors and which of their entries are alive
    initial: Mapping[str, torch.Tensor] | None = None  # magnitude_increase: W_k
    model: nn.Module | None = None  # at-init methods: a model of the right architecture (copied, never changed)
    batch: tuple[torch.Tensor, torch.Tensor] | None = None  # snip/grasp: the class-balanced scoring batch
    input_shape: tuple[int, ...] = ()  # synflow: one example's shape
    bn_mode: str = "eval"  # "eval" | "train": BatchNorm while scoring with data
    temperature: float = 200.0  # grasp: logits / T
    seed: int = 0  # random_init
    # snip/grasp: loss(outputs, targets); cross-entropy on logits, as in all three papers (the
    # oracle tests put a least-squares loss here, whose Hessian has a closed form)
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy


Scorer = Callable[[ScoreInputs], dict[str, torch.Tensor]]


def select(scores: Mapping[str, torch.Tensor], mask: Mask, keep: Sequence[int], scope: str, invert: bool = False) -> Mask:
    """The mask keeping exactly `keep` alive entries of highest score: `keep` is one total
    (scope "global", over the concatenation of the tensors in mask order) or one count per tensor
    in mask order (scope "layerwise"). `invert` keeps the lowest scores instead (Frankle et al.
    2021's score inversion), at the same counts. Scores of dead entries are ignored."""
    names = list(mask)
    keep = [int(c) for c in keep]
    if scope == "global":
        groups, counts = [names], keep
    elif scope == "layerwise":
        groups, counts = [[n] for n in names], keep
    else:
        raise ValueError(f"scope must be global or layerwise, got {scope!r}")
    if len(counts) != len(groups):
        raise ValueError(f"keep: {len(counts)} counts for {len(groups)} groups of scope {scope}")
    out: Mask = {}
    for group, count in zip(groups, counts):
        alive = torch.cat([mask[n].reshape(-1).cpu() for n in group])
        flat = torch.cat([scores[n].detach().reshape(-1).to("cpu", torch.float64) for n in group])
        if invert:
            flat = -flat
        if not bool(torch.isfinite(flat).logical_or_(~alive).all()):
            raise ValueError(f"scores of {group[0]!r}{' ...' if len(group) > 1 else ''} hold NaN or inf among alive entries")
        n_alive = int(alive.count_nonzero())
        if not 0 <= count <= n_alive:
            raise ValueError(f"keep: cannot keep {count} of {n_alive} alive weights in {group[0]!r}")
        new = remove_smallest(flat, alive, n_alive - count)
        for n, part in zip(group, torch.split(new, [mask[n].numel() for n in group])):
            out[n] = part.reshape(mask[n].shape)
    return out
