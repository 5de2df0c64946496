"""Layer collapse: does a mask disconnect the network?

A mask disconnects the network when a prunable layer keeps no weight at all, or when no path of
kept weights leads from the input to the output (Tanaka et al. 2020 call this layer collapse: the
network then computes a constant, its biases, and sits at chance accuracy, whatever training does).

The path test is a forward pass through a copy of the network in float64 whose every Conv/Linear
weight is its mask (1 kept, 0 pruned; 1 for a weight the mask does not cover) divided by the
weight's fan-in, every bias 0, and every BatchNorm the identity (scale 1, or its mask for a
structured mask, shift 0, statistics 0 and 1), on one all-ones input in eval mode. Every value is
then >= 0, ReLU and pooling keep a positive value positive, and an output is > 0 exactly when some
path of kept weights reaches it from the input. The division by the fan-in keeps each layer's
values at most its input's, so nothing overflows (depth d scales a value by at least fan_in^-d,
far from float64's 1e-308 for any network here).
"""
from __future__ import annotations

import copy
from typing import Mapping

import torch
import torch.nn as nn


def disconnection(model: nn.Module, mask: Mapping[str, torch.Tensor], prunable: Mapping[str, torch.Tensor],
                  input_shape: tuple[int, ...]) -> str | None:
    """Why `mask` disconnects `model`, or None when it does not. `prunable`: the mask's prunable
    tensors (a layer left empty is named); `mask` may cover more (a structured mask's BatchNorm)."""
    for name, m in prunable.items():
        if not bool(m.any()):
            return f"layer {name} has no weight left"
    if all(bool(m.all()) for m in mask.values()):
        return None  # nothing pruned: every path is there
    if not has_path(model, mask, input_shape):
        return "no path of kept weights from the input to the output"
    return None


def has_path(model: nn.Module, mask: Mapping[str, torch.Tensor], input_shape: tuple[int, ...]) -> bool:
    net = copy.deepcopy(model).to("cpu", torch.float64)
    net.eval()
    with torch.no_grad():
        for mod_name, module in net.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                keep = mask.get(f"{prefix}weight")
                w = torch.ones_like(module.weight) if keep is None else keep.to("cpu", torch.float64).reshape(module.weight.shape)
                module.weight.copy_(w / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                if module.weight is not None:
                    keep = mask.get(f"{prefix}weight")
                    module.weight.copy_(torch.ones_like(module.weight) if keep is None else keep.to(torch.float64))
                    module.bias.zero_()
                if module.running_mean is not None:
                    module.running_mean.zero_()
                    module.running_var.fill_(1.0)
        out = net(torch.ones((1, *input_shape), dtype=torch.float64))
    return bool((out > 0).any())
