"""Structured (channel) pruning: a score per channel group channel, and the exact-count step.

Scores (pruning.channel_score), one value per channel of a group (trainers/structure.py), summed
over the group's producers when it has several (a coupled group):
- `l1_filter` (Li et al. 2017): the L1 norm of the channel's filter, sum |W[c]| over its
  in_channels x k x k weights.
- `bn_gamma` (network slimming, Liu et al. 2017): |gamma[c]| of the BatchNorm that follows;
  trained with train.l1_gamma > 0 so that the scales become sparse.
- `hrank` (Lin et al., CVPR 2020; lmbxmu/HRank rank_generation.py): the matrix rank of channel
  c's feature map, averaged over every image of `rank_batches` training batches of
  `rank_batch_size` (the reference's 5 of 128), the network in eval mode, as the reference
  computes it. The feature map is ReLU of the BatchNorm output after the producer convolution (of
  the convolution's output where no BatchNorm follows), the map the reference hooks in VGG; a
  coupled group sums its producers' average ranks. The rank is torch.linalg.matrix_rank's, whose
  default tolerance (max(H, W) * eps * largest singular value) is the reference's torch.matrix_rank
  one. It needs data, so the job's head computes it (`hrank_scores`) and hands the scores in.

A level removes ceil(fraction * remaining channels), globally over the groups
(`magnitude_global`) or per group (`magnitude_layerwise`), with `trainers.pruning.remove_smallest`
(ties go by position: group order, then channel index). Every group keeps at least one channel:
under the global strategy the best-scoring alive channel of each group is not a candidate (the
planner has checked that enough channels remain, so the count stays exact); per group, the
planner refuses a level that would empty one.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Iterable, Mapping

import torch
import torch.nn as nn

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


# Scores that need data and a forward pass: computed by the job's head (hrank_scores), not here.
DATA_SCORES = frozenset({"hrank"})


def average_rank(maps: torch.Tensor) -> torch.Tensor:
    """Per channel, the matrix rank of each (H, W) map of `maps` [N, C, H, W], summed over the N
    images (float64; divide by the image count for the average)."""
    n, c, h, w = maps.shape
    ranks = torch.linalg.matrix_rank(maps.detach().reshape(n * c, h, w))
    return ranks.reshape(n, c).sum(dim=0).to(torch.float64)


def hrank_scores(model: nn.Module, weights: Weights, groups: list[ChannelGroup],
                 batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each group's channels' average feature-map rank over the images of `batches` (inputs as
    the model takes them), `weights` loaded into a copy of `model` (never changed) in eval mode,
    on CPU. A coupled group sums over its producers."""
    net = copy.deepcopy(model).to("cpu", torch.float32)
    net.load_state_dict({k: v.to("cpu") for k, v in weights.items()})
    net.eval()
    modules = dict(net.named_modules())
    sums: dict[str, torch.Tensor] = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    hooks = []

    def hook_for(group: str):
        def hook(_module, _inputs, output):
            sums[group] += average_rank(torch.relu(output))
        return hook

    for g in groups:
        for name in (g.norms or g.convs):
            hooks.append(modules[name].register_forward_hook(hook_for(g.name)))
    images = 0
    try:
        with torch.no_grad():
            for x in batches:
                net(x.to("cpu", torch.float32))
                images += x.shape[0]
    finally:
        for h in hooks:
            h.remove()
    if images == 0:
        raise ValueError("hrank: no images to compute feature-map ranks on")
    return {name: s / images for name, s in sums.items()}


def channel_scores(weights: Weights, groups: list[ChannelGroup], score: str) -> dict[str, torch.Tensor]:
    if score in DATA_SCORES:
        raise ValueError(f"pruning.channel_score {score} needs data: the job's head computes it (hrank_scores)")
    try:
        fn = CHANNEL_SCORES[score]
    except KeyError:
        valid = ", ".join([*CHANNEL_SCORES, *sorted(DATA_SCORES)])
        raise ValueError(f"pruning.channel_score must be one of {valid}, got {score!r}") from None
    out = {}
    for g in groups:
        out[g.name] = fn(weights, g)
    return out


def prune_channels(weights: Weights, alive: Channels, groups: list[ChannelGroup], cfg: PruneConfig,
                   scores: Mapping[str, torch.Tensor] | None = None) -> Channels:
    """The channel flags of the next level: ceil(fraction * remaining) channels removed. `scores`:
    given by the caller for a score that needs data (DATA_SCORES), else computed from `weights`."""
    check_fraction(cfg.fraction)
    if scores is None:
        scores = channel_scores(weights, groups, cfg.channel_score)
    for g in groups:
        if not bool(torch.isfinite(scores[g.name]).all()):
            raise ValueError(f"channel scores of {g.name} hold NaN or inf: cannot prune by {cfg.channel_score}")
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
