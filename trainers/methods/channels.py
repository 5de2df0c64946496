"""Structured (channel) pruning: a score per channel group channel, and the exact-count step.

Scores (pruning.channel_score), one value per channel of a group (trainers/structure.py), summed
over the group's producers when it has several (a coupled group):
- `l1_filter` (Li et al. 2017): the L1 norm of the channel's filter, sum |W[c]| over its
  in_channels x k x k weights.
- `bn_gamma` (network slimming, Liu et al. 2017): |gamma[c]| of the BatchNorm that follows;
  trained with train.l1_gamma > 0 so that the scales become sparse.

A level removes ceil(fraction * remaining channels), globally over the groups
(`magnitude_global`) or per group (`magnitude_layerwise`), with `trainers.pruning.remove_smallest`
(ties go by position: group order, then channel index). Every group keeps at least one channel:
under the global strategy the best-scoring alive channel of each group is not a candidate (the
planner has checked that enough channels remain, so the count stays exact); per group, the
planner refuses a level that would empty one.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import torch

from trainers.jobs import PruneConfig
from trainers.prune_counts import check_fraction, prune_count
from trainers.pruning import remove_smallest
from trainers.structure import ChannelGroup, Channels

Weights = Mapping[str, torch.Tensor]


def l1_filter(weights: Weights, group: ChannelGroup) -> torch.Tensor:
    total = torch.zeros(group.size, dtype=torch.float64)
    for conv in group.convs:
        w = weights[f"{conv}.weight"].detach().to("cpu", torch.float64)
        total += w.reshape(group.size, -1).abs().sum(dim=1)
    return total


def bn_gamma(weights: Weights, group: ChannelGroup) -> torch.Tensor:
    if not group.norms:
        raise ValueError(f"pruning.channel_score: bn_gamma needs a BatchNorm after {group.name}, which has none")
    total = torch.zeros(group.size, dtype=torch.float64)
    for bn in group.norms:
        total += weights[f"{bn}.weight"].detach().to("cpu", torch.float64).abs()
    return total


CHANNEL_SCORES: dict[str, Callable[[Weights, ChannelGroup], torch.Tensor]] = {
    "l1_filter": l1_filter,
    "bn_gamma": bn_gamma,
}


def channel_scores(weights: Weights, groups: list[ChannelGroup], score: str) -> dict[str, torch.Tensor]:
    try:
        fn = CHANNEL_SCORES[score]
    except KeyError:
        raise ValueError(f"pruning.channel_score must be one of {', '.join(CHANNEL_SCORES)}, got {score!r}") from None
    out = {}
    for g in groups:
        s = fn(weights, g)
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"channel scores of {g.name} hold NaN or inf: cannot prune by {score}")
        out[g.name] = s
    return out


def prune_channels(weights: Weights, alive: Channels, groups: list[ChannelGroup], cfg: PruneConfig) -> Channels:
    """The channel flags of the next level: ceil(fraction * remaining) channels removed."""
    check_fraction(cfg.fraction)
    scores = channel_scores(weights, groups, cfg.channel_score)
    if cfg.strategy == "magnitude_layerwise":
        out = {}
        for g in groups:
            a = alive[g.name]
            count = prune_count(int(a.count_nonzero()), cfg.fraction)
            if count >= int(a.count_nonzero()):
                raise ValueError(f"pruning: {g.name} would lose all its {int(a.count_nonzero())} channels")
            out[g.name] = remove_smallest(scores[g.name].clone(), a, count)
        return out
    if cfg.strategy != "magnitude_global":
        raise ValueError(f"prune_channels: strategy {cfg.strategy!r} does not score channels")
    flags = torch.cat([alive[g.name] for g in groups])
    flat = torch.cat([scores[g.name] for g in groups])
    n_alive = int(flags.count_nonzero())
    count = prune_count(n_alive, cfg.fraction)
    if n_alive - count < len(groups):
        raise ValueError(f"pruning: {count} of {n_alive} channels would leave fewer than one per group ({len(groups)})")
    protected = torch.zeros_like(flags)
    offset = 0
    for g in groups:  # each group's best alive channel (the last among equals) is no candidate
        a, s = alive[g.name], scores[g.name]
        best = torch.where(a, s, torch.full_like(s, -math.inf))
        protected[offset + best.numel() - 1 - int(torch.argmax(best.flip(0)))] = True
        offset += g.size
    new = remove_smallest(flat, flags & ~protected, count) | protected
    parts = torch.split(new, [g.size for g in groups])
    return {g.name: p.clone() for g, p in zip(groups, parts)}


def shuffle_channels(alive: Channels, seed: int) -> Channels:
    """The random-pruning control for channels: each group keeps as many channels as `alive`, at
    positions drawn uniformly (one generator seeded by `seed`, groups in order)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    out = {}
    for name, a in alive.items():
        new = torch.zeros(a.numel(), dtype=torch.bool)
        new[torch.randperm(a.numel(), generator=gen)[: int(a.count_nonzero())]] = True
        out[name] = new
    return out
