"""IMP's mask criteria (Zhou, Lan, Liu & Yosinski, NeurIPS 2019, "Deconstructing Lottery
Tickets"): which trained weights a level keeps."""
from __future__ import annotations

import torch

from trainers.methods import ScoreInputs


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
