"""Loss and accuracy of a model on a split: shared by the training loop and interpolation."""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.nn.functional as F


def autocast_for(device: torch.device, precision: str, cache_enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA unless fp32 or fp64 is asked for; CPU runs stay fp32 (bitwise reproducible)."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
    return contextlib.nullcontext()


def param_dtype(precision: str) -> torch.dtype:
    """The dtype a model's weights are held in: float64 only for `fp64` (CPU oracle runs, where
    two code paths that sum in another order must agree to float64 rounding), else float32."""
    return torch.float64 if precision == "fp64" else torch.float32


def to_model_input(x: torch.Tensor, channels_last: bool, precision: str = "auto") -> torch.Tensor:
    if precision == "fp64" and x.is_floating_point():
        x = x.to(torch.float64)
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    precision: str = "auto",
    channels_last: bool = False,
    world_size: int = 1,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (a fraction in [0, 1]) over `batches`.

    On a gang (world_size > 1, the process group joined) each rank passes its own slice of the
    evaluation batches (`eval_batches(..., shard=Shard(rank, world_size))`, which reads and
    decodes that slice only) and the sums are all-reduced: the correct and example counts
    exactly (int64), the loss sum in float64. Each example's loss is added in float64 (not
    summed per batch in the logits' dtype), so how the examples are split changes the loss only
    by float64 reassociation of the sum, whatever the precision."""
    from trainers import distributed

    gang = distributed.in_gang(world_size)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    counts = torch.zeros(2, device=device, dtype=torch.int64)  # correct, examples
    with autocast_for(device, precision):
        for x, y in batches:
            logits = model(to_model_input(x, channels_last, precision))
            logits = logits.double() if precision == "fp64" else logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="none").double().sum()
            counts[0] += (logits.argmax(1) == y).sum()
            counts[1] += y.numel()
    model.train(was_training)
    if gang:
        import torch.distributed as dist

        dist.all_reduce(loss_sum)
        dist.all_reduce(counts)
    correct, count = counts.tolist()  # one device sync per evaluation, not one per batch
    if count == 0:
        raise ValueError("evaluation split is empty")
    return loss_sum.item() / count, correct / count
