"""Layer collapse: does a mask disconnect the network?

A mask disconnects the network when a prunable layer keeps no weight at all, or when no path of
kept weights leads from the input to the output (Tanaka et al. 2020 call this layer collapse: the
network then computes a constant, its biases, and sits at chance accuracy, whatever training does).

The path test is a forward pass through the network in float64 whose every Conv/Linear
weight is its mask (1 kept, 0 pruned; 1 for a weight the mask does not cover) divided by the
weight's fan-in, every bias 0, and every BatchNorm the identity (scale 1, or its mask for a
structured mask, shift 0, statistics 0 and 1), on one all-ones input in eval mode. Every value is
then >= 0, ReLU and pooling keep a positive value positive, and an output is > 0 exactly when some
path of kept weights reaches it from the input. The division by the fan-in keeps each layer's
values at most its input's, so nothing overflows (depth d scales a value by at least fan_in^-d,
far from float64's 1e-308 for any network here).
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn


UNMEASURED = ""  # disconnection's answer when the path test has no rule for a parameter


def disconnection(model: nn.Module, mask: Mapping[str, torch.Tensor], prunable: Mapping[str, torch.Tensor],
                  input_shape: tuple[int, ...]) -> str | None:
    """Why `mask` disconnects `model`, None when it does not, UNMEASURED when the path test cannot
    tell. `prunable`: the mask's prunable tensors (a layer left empty is named); `mask` may cover
    more (a structured mask's BatchNorm)."""
    for name, m in prunable.items():
        if not bool(m.any()):
            return f"layer {name} has no weight left"
    if all(bool(m.all()) for m in mask.values()):
        return None  # nothing pruned: every path is there
    path = has_path(model, mask, input_shape)
    if path is None:
        return UNMEASURED
    return None if path else "no path of kept weights from the input to the output"


def has_path(model: nn.Module, mask: Mapping[str, torch.Tensor], input_shape: tuple[int, ...]) -> bool | None:
    """Whether a path of kept weights leads from the input to an output (None: the network has
    a parameter the test has no rule for, so it is not measured)."""
    # torch.func.functional_call runs the model's own modules on substituted tensors: no copy of
    # the network (a deepcopy cost a 10-iteration LeNet job several percent of its time)
    tensors: dict[str, torch.Tensor] = {}
    modules = list(model.named_modules())
    for mod_name, module in modules:
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            keep = mask.get(f"{prefix}weight")
            shape = module.weight.shape
            w = torch.ones(shape, dtype=torch.float64) if keep is None else keep.to("cpu", torch.float64).reshape(shape)
            tensors[f"{prefix}weight"] = w / module.weight[0].numel()
            if module.bias is not None:
                tensors[f"{prefix}bias"] = torch.zeros(module.bias.shape, dtype=torch.float64)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.weight is not None:
                keep = mask.get(f"{prefix}weight")
                size = module.weight.shape
                tensors[f"{prefix}weight"] = torch.ones(size, dtype=torch.float64) if keep is None else keep.to("cpu", torch.float64)
                tensors[f"{prefix}bias"] = torch.zeros(size, dtype=torch.float64)
            if module.running_mean is not None:
                tensors[f"{prefix}running_mean"] = torch.zeros(module.running_mean.shape, dtype=torch.float64)
                tensors[f"{prefix}running_var"] = torch.ones(module.running_var.shape, dtype=torch.float64)
    if any(n not in tensors for n, _ in model.named_parameters()):
        return None  # a parameter of a kind the argument above does not cover: not measured, never guessed
    modes = {m: m.training for _, m in modules}
    model.eval()
    try:
        with torch.no_grad():
            out = torch.func.functional_call(model, tensors, (torch.ones((1, *input_shape), dtype=torch.float64),))
    finally:
        for m, training in modes.items():
            m.training = training
    return bool((out > 0).any())
