"""K copies of a network as one network: the stacked module that packed training trains.

Member k's channels are block k of every activation: an input is the members' batches joined
along the channel (or feature) dimension, (B, K*C, H, W). Each Conv2d becomes one convolution
with K times the groups, so member k's outputs read member k's inputs only; each BatchNorm2d
runs over K*C channels, whose statistics are per channel and so per member (each member's
channels see its own batch); each Linear becomes a batched matrix product (`StackedLinear`).
Parameter-free layers (ReLU, pooling, flatten, residual sums) act per channel or per block and
need no change. Every stacked tensor is the members' tensors joined along dimension 0 and keeps
the single model's name, so masks, optimizer state and files map member by member with `chunk`.

Whether an architecture stacks correctly is checked, not assumed (`stack_problem`): a model
whose forward mixes channels outside these layers (a channel-padding shortcut, attention) would
compute something else, and is refused with the reason.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainers.models import build_model

COUNTER = "num_batches_tracked"  # BatchNorm's step counter: one per layer, not per channel


class StackedLinear(nn.Module):
    """K Linear layers (in -> out) as one: weight (K*out, in), bias (K*out,), input (B, K*in)."""

    def __init__(self, k: int, in_features: int, out_features: int, bias: bool, device=None, dtype=None):
        super().__init__()
        self.k, self.in_features, self.out_features = k, in_features, out_features
        self.weight = nn.Parameter(torch.empty(k * out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(k * out_features, device=device, dtype=dtype)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        xs = x.reshape(b, self.k, self.in_features).transpose(0, 1)  # (K, B, in)
        w = self.weight.view(self.k, self.out_features, self.in_features).transpose(1, 2)  # (K, in, out)
        if self.bias is None:
            out = torch.bmm(xs, w)
        else:
            out = torch.baddbmm(self.bias.view(self.k, 1, self.out_features), xs, w)
        return out.transpose(0, 1).reshape(b, self.k * self.out_features)


def _stacked_layer(m: nn.Module, k: int) -> nn.Module:
    kw = {"device": "meta"}
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros":
            raise ValueError(f"Conv2d with padding_mode={m.padding_mode!r}")
        return nn.Conv2d(k * m.in_channels, k * m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                         dilation=m.dilation, groups=k * m.groups, bias=m.bias is not None, **kw)
    if isinstance(m, nn.BatchNorm2d):
        if m.momentum is None:  # a cumulative average would read the per-member counters
            raise ValueError("BatchNorm2d with momentum=None")
        return nn.BatchNorm2d(k * m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                              track_running_stats=m.track_running_stats, **kw)
    if isinstance(m, nn.Linear):
        return StackedLinear(k, m.in_features, m.out_features, m.bias is not None, **kw)
    raise ValueError(f"layer {type(m).__name__}")


def _stack_structure(model: nn.Module, k: int) -> nn.Module:
    """The stacked module's structure (on `meta`): `model` with every layer replaced."""
    stacked = copy.deepcopy(model).to("meta")

    def replace(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
                setattr(parent, name, _stacked_layer(child, k))
            elif child._parameters or child._buffers:  # tensors of a layer stacking does not know
                raise ValueError(f"layer {type(child).__name__}")
            else:  # containers (Sequential, residual blocks) and parameter-free layers
                replace(child)

    replace(stacked)
    return stacked


def stack_states(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """K single-model state_dicts -> the stacked module's (each tensor joined along dim 0).
    BatchNorm's counters start at 0: `member_state` adds each member's own starting count."""
    return {n: (torch.zeros_like(t) if n.endswith(COUNTER) else torch.cat([s[n] for s in states]))
            for n, t in states[0].items()}


def member_state(stacked: dict[str, torch.Tensor], k: int, K: int, counters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Member k's single-model state_dict (views) from the stacked one; `counters` holds the
    member's BatchNorm counters at the start (a member may start from W_k, another from W_T)."""
    return {n: (counters[n] + t if n.endswith(COUNTER) else t.chunk(K)[k]) for n, t in stacked.items()}


def build_stacked(model: nn.Module, states: Sequence[dict[str, torch.Tensor]], device: torch.device,
                  dtype: torch.dtype, memory_format: torch.memory_format = torch.preserve_format) -> nn.Module:
    """The stacked module of len(states) members of `model`'s architecture, holding their weights."""
    stacked = _stack_structure(model, len(states)).to_empty(device=device)
    stacked.to(dtype=dtype, memory_format=memory_format)
    stacked.load_state_dict(stack_states(states))
    return stacked


def stack_inputs(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The members' batches (B, C, ...) -> one input (B, K*C, ...), member k's channels block k."""
    return torch.cat(list(xs), dim=1)


def split_logits(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(B, K*classes) -> (K, B, classes)."""
    return logits.view(logits.shape[0], k, -1).transpose(0, 1)


def stack_problem(model_name: str, input_shape: tuple[int, ...], num_classes: int) -> str | None:
    """Why `model_name` cannot be trained stacked (None when it can), by trying it: two members
    with other weights, on CPU in float64, must give the same logits stacked as separately
    (training mode, so BatchNorm uses batch statistics; the gradients are autograd's of the
    same per-member function). A float64 sum taken in
    another order differs by about 1e-16 relative per term; 1e-9 relative leaves room for long
    sums and stays far below the O(1) error of a wrong channel mapping."""
    try:
        members = [build_model(model_name, input_shape, num_classes, seed=s).double() for s in (11, 12)]
        stacked = build_stacked(members[0], [m.state_dict() for m in members], torch.device("cpu"), torch.float64)
    except ValueError as e:
        return f"{model_name} has a layer stacking does not support ({e})"
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(3, *input_shape, generator=gen, dtype=torch.float64) for _ in members]
    with torch.no_grad():
        alone = [m(x) for m, x in zip(members, xs)]
        together = split_logits(stacked(stack_inputs(xs)), len(members))
    scale = max(o.abs().max().item() for o in alone)
    if any((a - t).abs().max().item() > 1e-9 * scale for a, t in zip(alone, together)):
        return f"{model_name}: stacked logits differ from the members' own (its forward mixes channels)"
    return None


def member_losses(logits: torch.Tensor, y: torch.Tensor, k: int, label_smoothing: float) -> torch.Tensor:
    """Each member's mean cross-entropy, (K,). The step minimises their sum (trainers/graphed.py),
    whose gradient with respect to member k's weights is member k's own loss gradient; kept
    apart, they say which member's loss stopped being finite. `y` is (K, B)."""
    per = F.cross_entropy(split_logits(logits, k).flatten(0, 1), y.flatten(), reduction="none", label_smoothing=label_smoothing)
    return per.view(k, -1).mean(1)
