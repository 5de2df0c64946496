"""IMP's mask criteria (Zhou, Lan, Liu & Yosinski, NeurIPS 2019, "Deconstructing Lottery
Tickets"): which trained weights a level keeps."""
from __future__ import annotations

from typing import Mapping

import torch

from trainers.jobs import PruneConfig
from trainers.methods.base import ScoreInputs, select
from trainers.prune_counts import check_fraction, layer_fraction, prune_count
from trainers.pruning import Mask


def large_final(inp: ScoreInputs) -> dict[str, torch.Tensor]:
    """|w_T|: the original lottery-ticket criterion."""
    return {n: inp.weights[n].detach().to("cpu", torch.float64).abs() for n in inp.mask}


def magnitude_increase(inp: ScoreInputs) -> dict[str, torch.Tensor]:
    """|w_T| - |w_k|: how much a weight grew in magnitude during training from the rewinding point."""
    if inp.initial is None:
        raise ValueError("magnitude_increase needs the weights training started from (W_k)")
    return {
        n: inp.weights[n].detach().to("cpu", torch.float64).abs() - inp.initial[n].detach().to("cpu", torch.float64).abs()
        for n in inp.mask
    }


CRITERIA = {"magnitude": large_final, "magnitude_increase": magnitude_increase}


def criterion_mask(weights: Mapping[str, torch.Tensor], mask: Mask, cfg: PruneConfig,
                   initial: Mapping[str, torch.Tensor] | None) -> Mask:
    """A level's mask by `cfg.criterion` (`initial`: W_k), at IMP's counts (ceil(fraction x
    remaining), over all tensors or per tensor) and tie-break (trainers.pruning.remove_smallest)."""
    check_fraction(cfg.fraction)
    if cfg.criterion not in CRITERIA:
        raise ValueError(f"prune criterion must be one of {', '.join(CRITERIA)}, got {cfg.criterion!r}")
    missing = [n for n in mask if n not in weights or (initial is not None and n not in initial)]
    if missing:
        raise ValueError(f"weights lack the mask's tensors {missing[:5]}")
    if cfg.criterion != "magnitude" and initial is None:
        raise ValueError(f"prune criterion {cfg.criterion}: needs the weights training started from (W_k)")
    mask = {k: m.cpu() for k, m in mask.items()}
    scores = CRITERIA[cfg.criterion](ScoreInputs(weights=weights, mask=mask, initial=initial))
    alive = [int(m.count_nonzero()) for m in mask.values()]
    if cfg.strategy == "magnitude_global":
        keep = [sum(alive) - prune_count(sum(alive), cfg.fraction)]
    elif cfg.strategy == "magnitude_layerwise":
        keep = [a - prune_count(a, layer_fraction(cfg, n)) for a, n in zip(alive, mask)]
    else:
        raise ValueError(f"prune criterion {cfg.criterion}: strategy {cfg.strategy!r} does not rank weights")
    return select(scores, mask, keep, "global" if cfg.strategy == "magnitude_global" else "layerwise")
