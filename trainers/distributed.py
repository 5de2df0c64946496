"""One job as a gang of N ranks (torch.distributed: NCCL on GPUs, gloo on CPU): the rank side.

Plain functions the training loop (trainers/train.py) and whoever starts the ranks (a Ray
actor, torchrun, a test's processes) call; nothing here knows about Ray.

What the loop relies on (docs/design.md, "Jobs on N ranks"):
- the global batch of iteration i is the single-process batch, a function of the data seed only;
  rank r trains on its contiguous slice `rank_slice(B, r, N)` (the first B mod N ranks take one
  example more), so the union of the slices is the batch for every N, an uneven split included;
- each rank's loss is the *sum* of its examples' losses times N / B (`loss_scale`): DDP averages
  gradients over the N ranks, so the update is the gradient of the exact mean over the global
  batch whatever the split (averaging per-rank means would weight a short slice's examples more);
- BatchNorm is explicit (`train.bn_sync`): `global` normalises with the statistics of the whole
  global batch (nn.SyncBatchNorm on CUDA; `GlobalBatchNorm` below on CPU, where SyncBatchNorm
  refuses to run), the same mathematics for every N; `per_replica` keeps each rank's statistics,
  which makes the per-rank batch part of the job (`train.bn_batch`, checked by `check`).
"""
from __future__ import annotations

import datetime
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GangMember:
    """Where one rank of a gang finds the others (rank 0 listens at address:port)."""

    rank: int
    world_size: int
    address: str
    port: int
    # A collective that waits longer than this is a fault (a dead or hung rank): the rank raises
    # instead of waiting forever, and the gang is torn down and retried.
    timeout_seconds: float = 1800.0


def backend_for(device: torch.device) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def free_port() -> int:
    """A TCP port free on this host now (rank 0's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def host_address() -> str:
    """An address of this host the other ranks can reach (rank 0's rendezvous)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def join(member: GangMember, device: torch.device) -> None:
    """Join the gang's process group (blocks until all N ranks have joined, or times out)."""
    if dist.is_initialized():
        raise RuntimeError("this process already belongs to a process group; leave() it first")
    dist.init_process_group(
        backend_for(device),
        init_method=f"tcp://{member.address}:{member.port}",
        rank=member.rank,
        world_size=member.world_size,
        timeout=datetime.timedelta(seconds=member.timeout_seconds),
    )


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_slice(global_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """[lo, hi) of rank `rank` in a global batch of `global_size` examples: contiguous slices in
    rank order, the first global_size mod world_size ranks one example longer."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a gang of {world_size}")
    base, extra = divmod(global_size, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def loss_scale(global_size: int, world_size: int) -> float:
    """What a rank multiplies the *sum* of its examples' losses by, so that DDP's average over the
    ranks is the mean over the global batch."""
    return world_size / global_size


def weighted_cross_entropy(logits: torch.Tensor, y: torch.Tensor, global_size: int, world_size: int,
                           label_smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(logits, y, label_smoothing=label_smoothing, reduction="sum") * loss_scale(global_size, world_size)


def check(batch_size: int, bn_sync: str, bn_batch: int | None, world_size: int, device: torch.device,
          cuda_graphs: bool = False) -> None:
    """Refuse a job that N ranks cannot run as described (the orchestrator checks the same at
    `lth run`, naming the config field)."""
    if bn_sync not in ("global", "per_replica"):
        raise ValueError(f"train.bn_sync: unknown mode {bn_sync!r} (valid: global, per_replica)")
    if bn_sync == "per_replica":
        if bn_batch is None:
            raise ValueError("train.bn_batch: bn_sync per_replica needs the per-rank batch fixed (it is part of the job)")
        if bn_batch * world_size != batch_size:
            raise ValueError(
                f"train.bn_batch: per-replica BatchNorm over {bn_batch} examples per rank needs "
                f"batch_size / ranks = {bn_batch}, but {batch_size} / {world_size} ranks gives another per-rank batch"
            )
    if world_size > 1 and cuda_graphs:
        raise ValueError("train.cuda_graphs: a step captured as a CUDA graph cannot hold DDP's collectives; "
                         "use cuda_graphs: false for jobs on several ranks")


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks, differentiable: the gradient of each rank's input is the sum over the
    ranks of the output's gradients (every rank's loss depends on the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        out = grad.clone()
        dist.all_reduce(out)
        return out


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(x)


def all_reduce_min(x: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    dist.all_reduce(out, op=dist.ReduceOp.MIN)
    return out


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the whole global batch, on any backend (gloo included).

    Two all-reduces per forward (the sum, then the sum of squared deviations from the global
    mean: the two-pass variance, as BatchNorm computes it), both differentiable
    (`all_reduce_sum`), so the backward pass is the single-process one up to rounding.
    Evaluation uses the running statistics, as BatchNorm does."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected a batch of at least 2 dimensions, got {x.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        dims = [0, *range(2, x.ndim)]
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        sums = all_reduce_sum(torch.cat([x.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        shape = (1, -1, *([1] * (x.ndim - 2)))
        centred = x - mean.view(shape)
        var = all_reduce_sum((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)  # unbiased, as BatchNorm
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def _to_global(module: nn.Module) -> nn.Module:
    """BatchNorm layers replaced by GlobalBatchNorm sharing their parameters and buffers (the
    state dict's names and tensors are unchanged)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        for name, p in module.named_parameters(recurse=False):
            setattr(new, name, p)
        for name, b in module.named_buffers(recurse=False):
            setattr(new, name, b)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, _to_global(child))
    return module


def sync_batchnorm(model: nn.Module, bn_sync: str, world_size: int, device: torch.device) -> nn.Module:
    """`model` with BatchNorm over the global batch when bn_sync is global and N > 1 (in place:
    the parameters stay the same tensors, so masks and the optimizer may be built after)."""
    if world_size == 1 or bn_sync != "global":
        return model
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_global(model)


def data_parallel(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """The module the training step calls: `model` itself on one rank, DDP around it on N
    (which averages gradients over the ranks during backward and starts from rank 0's weights).
    Buffers (BatchNorm's running statistics under per_replica) are broadcast from rank 0."""
    if world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(device)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)  # buffers broadcast from rank 0: the default
