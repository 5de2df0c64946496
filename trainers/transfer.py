"""Ticket transfer (Morcos, Yu, Paganini & Tian, NeurIPS 2019): a winning ticket found on one
data set or with one optimizer, trained on another.

The ticket is the source level's mask with the source's weights at its rewinding point W_k
("late resetting"). Every tensor but the output layer must have the same shape in the target
network (a model with global pooling takes any resolution). The output layer (`fc`, every
model's classifier) is, by `TransferConfig.output_layer`:

- `source`: the source's weights and mask (only when the class counts agree);
- `fresh`: the target's own W0 (init_seed), masked at the source output layer's density
  (round(density x size) weights, positions drawn from `seed`);
- `dense`: the target's own W0, unpruned.

Controls at the ticket's per-layer counts: `random_mask` shuffles the mask within each layer
(the transferred weights kept); `fresh_weights` keeps the mask with the target's own W0.
"""
from __future__ import annotations

import torch

from trainers.jobs import TransferConfig
from trainers.pruning import shuffle_within_layers

OUTPUT_PREFIX = "fc."  # every model's output layer (trainers/models.py)


def is_output(name: str) -> bool:
    return name.startswith(OUTPUT_PREFIX)


def transferred_start(cfg: TransferConfig, target_w0: dict[str, torch.Tensor], prunable: list[str],
                      source_weights: dict[str, torch.Tensor], source_mask: dict[str, torch.Tensor]
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(weights, mask) a transfer job starts from, on CPU.

    target_w0: the target network's state_dict at W0 (init_seed); prunable: its prunable tensor
    names; source_weights: the source's W_k; source_mask: the source level's mask (a tensor it
    lacks was never pruned there: all kept)."""
    weights: dict[str, torch.Tensor] = {}
    for name, w0 in target_w0.items():
        if is_output(name) and cfg.output_layer != "source":
            weights[name] = w0.clone()
            continue
        src = source_weights.get(name)
        if src is None or src.shape != w0.shape:
            got = "missing" if src is None else f"of shape {tuple(src.shape)}"
            fix = ("; the class counts differ: set transfer.output_layer to fresh or dense" if is_output(name)
                   else "; a ticket transfers between networks whose layers (all but the output layer) have one shape: "
                        "a model with global pooling takes any image size")
            raise ValueError(f"transfer: the source's {name} is {got}, the target's is {tuple(w0.shape)}{fix}")
        weights[name] = src.clone().to(w0.dtype)

    mask: dict[str, torch.Tensor] = {}
    for name in prunable:
        shape = target_w0[name].shape
        src = source_mask.get(name)
        if is_output(name) and cfg.output_layer == "dense":
            mask[name] = torch.ones(shape, dtype=torch.bool)
        elif is_output(name) and cfg.output_layer == "fresh":
            kept = 1.0 if src is None else int(src.count_nonzero()) / src.numel()
            mask[name] = _random_mask(shape, round(kept * torch.Size(shape).numel()), cfg.seed)
        elif src is None:
            mask[name] = torch.ones(shape, dtype=torch.bool)
        elif src.shape != shape:
            raise ValueError(f"transfer: the source's mask of {name} has shape {tuple(src.shape)}, the target's weight {tuple(shape)}")
        else:
            mask[name] = src.to(torch.bool).clone()

    if cfg.control == "random_mask":
        mask = shuffle_within_layers(mask, cfg.seed)
    elif cfg.control == "fresh_weights":
        weights = {n: w.clone() for n, w in target_w0.items()}
    return weights, mask


def _random_mask(shape: torch.Size, keep: int, seed: int) -> torch.Tensor:
    # a different stream from the random_mask control's shuffle of the same seed
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed) ^ 0x5EED0F)
    flat = torch.zeros(torch.Size(shape).numel(), dtype=torch.bool)
    flat[torch.randperm(flat.numel(), generator=gen)[:max(1, keep)]] = True
    return flat.reshape(shape)
