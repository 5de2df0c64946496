"""Masks and pruning (the science is fixed by DESIGN.md, "The science, precisely").

- Prunable tensors: the `weight` of every nn.Conv*/nn.Linear module, minus the parameter names
  matched by the `ignore` fnmatch patterns. Biases and BatchNorm are never prunable.
- A mask is `{parameter_name: bool tensor}` over exactly the prunable tensors, on CPU, in
  state_dict order (dict order survives torch.save/torch.load).
- One pruning step removes count = ceil(p * remaining) of the *remaining* weights.
- Ties in magnitude are broken by position: among equal |w|, the weight with the smaller flat
  index is removed first, where the flat index runs over the concatenation of the mask's
  tensors in mask (= state_dict) order (per tensor for `magnitude_layerwise`).
  Already-pruned weights always rank as removed, whatever value they hold.
"""
from __future__ import annotations

import functools
import math
from typing import Iterable, Mapping

import torch
import torch.nn as nn

from trainers.jobs import PruneConfig
from trainers.prune_counts import (  # noqa: F401  (the counting half, re-exported: one import for callers)
    STRATEGIES,
    check_fraction,
    check_strategy,
    layer_fraction,
    planned_densities,
    planned_remaining,
    prune_count,
    select_prunable,
)

Mask = dict[str, torch.Tensor]


# ---- which tensors -------------------------------------------------------------------------


def candidate_names(model: nn.Module) -> list[str]:
    """The weight of every Conv/Linear module, in state_dict order: what pruning may touch
    (model_catalog.py records these per model, for planning without torch)."""
    kinds = {
        f"{mod_name}.weight" if mod_name else "weight"
        for mod_name, mod in model.named_modules()
        if isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)) and isinstance(getattr(mod, "weight", None), nn.Parameter)
    }
    return [n for n, _ in model.named_parameters() if n in kinds]


def prunable_names(model: nn.Module, ignore: Iterable[str] = ()) -> list[str]:
    """Conv/Linear weight names minus `ignore` (fnmatch patterns), in state_dict order; a pattern
    that matches nothing is an error (prune_counts.select_prunable)."""
    return select_prunable(candidate_names(model), ignore)


def prunable_sizes(model: nn.Module, ignore: Iterable[str] = ()) -> dict[str, int]:
    """Prunable name -> number of weights; works on a `meta` model (see models.meta_model)."""
    params = dict(model.named_parameters())
    return {n: params[n].numel() for n in prunable_names(model, ignore)}


# ---- masks ---------------------------------------------------------------------------------


def full_mask(model: nn.Module, ignore: Iterable[str] = ()) -> Mask:
    params = dict(model.named_parameters())
    return {n: torch.ones(params[n].shape, dtype=torch.bool) for n in prunable_names(model, ignore)}


def density(mask: Mask) -> float:
    """remaining / total over the mask's (= the prunable) tensors."""
    total = sum(m.numel() for m in mask.values())
    if total == 0:
        raise ValueError("mask is empty: no prunable tensors")
    return sum(int(m.count_nonzero()) for m in mask.values()) / total


def layer_densities(mask: Mask) -> dict[str, float]:
    return {n: int(m.count_nonzero()) / m.numel() for n, m in mask.items()}


def remaining(mask: Mask) -> int:
    return sum(int(m.count_nonzero()) for m in mask.values())


def masked_weights(weights: Mapping[str, torch.Tensor], mask: Mask) -> dict[str, torch.Tensor]:
    """A copy of a state_dict with pruned weights set to zero (e.g. m_l * W_k)."""
    _check_keys(weights, mask)
    return {k: (v * mask[k].to(v.device, v.dtype) if k in mask else v.clone()) for k, v in weights.items()}


# ---- pruning -------------------------------------------------------------------------------


def _check_keys(weights: Mapping[str, torch.Tensor], mask: Mask) -> None:
    missing = [k for k in mask if k not in weights]
    if missing:
        raise ValueError(f"mask names tensors the weights do not have: {missing}")
    bad = [k for k in mask if tuple(mask[k].shape) != tuple(weights[k].shape)]
    if bad:
        raise ValueError(
            "mask and weight shapes differ for "
            + ", ".join(f"{k} (mask {tuple(mask[k].shape)}, weight {tuple(weights[k].shape)})" for k in bad)
        )
    not_bool = [k for k in mask if mask[k].dtype != torch.bool]
    if not_bool:
        raise ValueError(f"mask tensors must be bool, not for: {not_bool}")


def remove_smallest(scores: torch.Tensor, alive: torch.Tensor, count: int) -> torch.Tensor:
    """New alive flags (1-D) after removing the `count` alive entries of smallest score: the one
    selector every pruning method ends in (scores in, exact-count mask out).

    `scores` must be finite where alive; it is overwritten (dead entries set to +inf so they
    can never be chosen). Ties at the threshold go by position (smaller index removed first).
    O(n): one kthvalue, no sort, no boolean gather.
    """
    n_alive = int(alive.count_nonzero())
    if count <= 0:
        return alive.clone()
    if count >= n_alive:
        return torch.zeros_like(alive)
    scores.masked_fill_(~alive, math.inf)
    kth = torch.kthvalue(scores, count).values
    removed = scores < kth
    at = (scores == kth).nonzero().squeeze(1)
    removed[at[: count - int(removed.count_nonzero())]] = True
    return alive & ~removed


def _flat_magnitudes(weights: Mapping[str, torch.Tensor], mask: Mask, names: list[str]) -> torch.Tensor:
    """|w| of `names` concatenated (mask order) in one CPU buffer of their common dtype."""
    dtype = functools.reduce(torch.promote_types, [weights[k].dtype for k in names], torch.float32)
    sizes = [mask[k].numel() for k in names]
    buf = torch.empty(sum(sizes), dtype=dtype)
    for k, part in zip(names, torch.split(buf, sizes)):
        torch.abs(weights[k].detach().reshape(-1).to("cpu", dtype), out=part)
        if not bool(torch.isfinite(part).logical_or_(~mask[k].reshape(-1)).all()):
            raise ValueError(f"weights {k!r} hold NaN or inf among the unpruned entries: cannot prune by magnitude")
    return buf


def _global_magnitude(weights: Mapping[str, torch.Tensor], mask: Mask, fraction: float) -> Mask:
    names = list(mask)
    alive = torch.cat([mask[k].reshape(-1) for k in names])
    scores = _flat_magnitudes(weights, mask, names)
    new = remove_smallest(scores, alive, prune_count(int(alive.count_nonzero()), fraction))
    parts = torch.split(new, [mask[k].numel() for k in names])
    return {k: p.reshape(mask[k].shape) for k, p in zip(names, parts)}


def prune(weights: Mapping[str, torch.Tensor], mask: Mask, cfg: PruneConfig, seed: int = 0) -> Mask:
    """The mask of level l+1 from level l's final `weights` (a state_dict) and its `mask`.

    Only the mask's tensors are considered (others in `weights`, e.g. biases, are ignored).
    `random` (the random-pruning control) does not prune: `mask` is IMP's mask of the level
    and comes back shuffled within each layer (`shuffle_within_layers`; `weights` and the
    fraction are unused). `seed` only matters for it. Returns new CPU bool tensors.

    Another `cfg.criterion` ("magnitude_increase") is trainers.methods.magnitude.criterion_mask's.
    """
    check_strategy(cfg.strategy)
    check_fraction(cfg.fraction)
    _check_keys(weights, mask)
    if not mask:
        raise ValueError("mask is empty: no prunable tensors")
    mask = {k: m.cpu() for k, m in mask.items()}

    if cfg.strategy != "random" and cfg.criterion != "magnitude":
        # scored by trainers/methods, which imports this module: the caller goes there instead
        raise ValueError(f"prune criterion {cfg.criterion}: use trainers.methods.magnitude.criterion_mask")

    if cfg.strategy == "magnitude_global":
        return _global_magnitude(weights, mask, cfg.fraction)

    if cfg.strategy == "magnitude_layerwise":
        out = {}
        for k, m in mask.items():
            alive = m.reshape(-1)
            scores = _flat_magnitudes(weights, mask, [k])
            new = remove_smallest(scores, alive, prune_count(int(alive.count_nonzero()), layer_fraction(cfg, k)))
            out[k] = new.reshape(m.shape)
        return out

    return shuffle_within_layers(mask, seed)


def shuffle_within_layers(mask: Mask, seed: int) -> Mask:
    """The random-pruning control (open_lth's `randomly_prune`): each tensor keeps exactly as
    many weights as in `mask`, at positions drawn uniformly over the whole tensor, so per-layer
    densities equal the given mask's whatever strategy made it. One generator seeded by `seed`
    draws the tensors in mask order."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    out = {}
    for k, m in mask.items():
        keep = int(m.count_nonzero())
        new = torch.zeros(m.numel(), dtype=torch.bool)
        new[torch.randperm(m.numel(), generator=gen)[:keep]] = True
        out[k] = new.reshape(m.shape)
    return out


# ---- applying masks on the hot path --------------------------------------------------------


class MaskApplier:
    """Keeps pruned weights at exactly zero during training; built once per run.

    Build it after the model is on its device and in its memory format: it holds the
    parameters and the masks as tensors of the parameters' dtype, device and layout, so each
    call is one fused foreach multiply. Call `apply_to_grads()` after backward (so momentum,
    Adam moments and weight decay of pruned weights stay zero) and `apply_to_weights()` after
    the optimizer step (exact zeros whatever the optimizer does).

    `params` is a model or a {name: tensor} mapping (packed training passes its stacked
    tensors, whose masks are stacked alike). Tensors whose mask is all ones are left out: a
    multiply by one changes nothing, and a dense run then costs no mask work at all.
    """

    def __init__(self, params: nn.Module | Mapping[str, torch.Tensor], mask: Mask, l1_gamma: float = 0.0):
        # Network slimming's penalty l1_gamma * sum|gamma| enters as its subgradient on the
        # BatchNorm scales, added after backward and before the gradient masks (so a pruned
        # scale's gradient stays zero) and the optimizer step (so momentum sees it, as in the
        # reference code; weight decay would be another penalty).
        self.l1_gamma = float(l1_gamma)
        self.scales: list[torch.Tensor] = []
        if self.l1_gamma:
            if not isinstance(params, nn.Module):
                raise ValueError("train.l1_gamma needs the model (its BatchNorm layers), not a tensor mapping")
            self.scales = [m.weight for m in params.modules()
                           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
            if not self.scales:
                raise ValueError("train.l1_gamma: the model has no BatchNorm scales to penalise")
        params = dict(params.named_parameters()) if isinstance(params, nn.Module) else dict(params)
        missing = [k for k in mask if k not in params]
        if missing:
            raise ValueError(f"mask names parameters the model does not have: {missing}")
        bad = [k for k in mask if tuple(mask[k].shape) != tuple(params[k].shape)]
        if bad:
            raise ValueError(f"mask and parameter shapes differ for: {bad}")
        self.names = [k for k in mask if not bool(mask[k].all())]
        self.params = [params[k] for k in self.names]
        # empty_like keeps the parameter's memory format (channels_last), so the multiply
        # needs no layout conversion.
        self.masks = [torch.empty_like(p, requires_grad=False).copy_(mask[k]) for k, p in zip(self.names, self.params)]

    @torch.no_grad()
    def apply_to_weights(self) -> None:
        if self.params:
            torch._foreach_mul_(self.params, self.masks)

    @torch.no_grad()
    def apply_to_grads(self) -> None:
        if self.l1_gamma:
            scales = [p for p in self.scales if p.grad is not None]
            torch._foreach_add_([p.grad for p in scales], torch._foreach_sign(scales), alpha=self.l1_gamma)
        grads, masks = [], []
        for p, m in zip(self.params, self.masks):
            if p.grad is not None:
                grads.append(p.grad)
                masks.append(m)
        if grads:
            torch._foreach_mul_(grads, masks)
