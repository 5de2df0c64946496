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
  which makes the per-rank batch part of the job (`train.bn_batch`, checked by `check`);
- evaluation is sharded the same way (`eval_batches(..., shard)`): each rank reads, decodes and
  evaluates its slice of every evaluation batch and the integer counts and float64 loss sums
  are all-reduced (trainers/evaluate.py);
- what every rank must agree on is decided once: rank 0's view of the job's directory is
  broadcast (`from_rank0`), and the mask each rank computed is compared by digest before the
  first step (`check_same`): a mismatch is an error naming the ranks, never silent;
- a rank that fails aborts its process group (`leave(failed=True)`) instead of destroying it,
  which can block in a collective its peers never join.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import socket
import threading
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


def listen(address: str, port: int = 0) -> socket.socket:
    """Rank 0's rendezvous socket: bound to `address` alone (never the wildcard: torch's store has
    no authentication, so it must not be reachable from networks the ranks do not use) and
    listening. With port 0 the kernel picks the port, and holding the socket until `join` hands it
    to the store means no other process can take the port in between (choosing a free port and
    binding it later was a race a gang paid for with an attempt)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.bind((address, port))
        s.listen(socket.SOMAXCONN)
    except BaseException:
        s.close()
        raise
    return s


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port free on `address` now, for harnesses whose rank 0 is another process (tests,
    benchmarks under mp.spawn): that process binds it again in `join`, so a port taken in between
    is possible there; a gang on Ray holds its socket from `listen` to `join` instead."""
    with listen(address) as s:
        return s.getsockname()[1]


def interface_for(address: str) -> str | None:
    """The name of this host's interface that traffic to `address` leaves by ("lo" for
    127.0.0.1), or None when it cannot be told (no route, an IPv6 address, not Linux)."""
    import fcntl
    import struct

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((address, 1))  # no packet is sent: the kernel picks the source address
            source = s.getsockname()[0]
            for _, name in socket.if_nameindex():
                try:  # SIOCGIFADDR: the interface's IPv4 address
                    raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
                except OSError:  # an interface without an IPv4 address
                    continue
                if socket.inet_ntoa(raw[20:24]) == source:
                    return name
    except OSError:
        return None
    return None


def join(member: GangMember, device: torch.device, listener: socket.socket | None = None) -> None:
    """Join the gang's process group (blocks until all N ranks have joined, or times out).

    Nothing listens on the wildcard: rank 0's store serves on `listener` (or on a socket it binds
    to member.address), and gloo's and NCCL's own sockets use the interface that reaches rank 0
    (GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME; "lo" for a gang on 127.0.0.1), so a local gang is
    reachable from this host alone and a cluster gang from the network rank 0's address is on."""
    if dist.is_initialized():
        raise RuntimeError("this process already belongs to a process group; leave() it first")
    timeout = datetime.timedelta(seconds=member.timeout_seconds)
    iface = interface_for(member.address)
    if iface is not None:
        # read by gloo and NCCL when the group is created; a rank process joins one gang at a time
        os.environ["GLOO_SOCKET_IFNAME"] = os.environ["NCCL_SOCKET_IFNAME"] = iface
    if member.rank == 0:
        sock = listener if listener is not None else listen(member.address, member.port)
        # the store owns the descriptor from here (it closes it when the group goes)
        store = dist.TCPStore(member.address, member.port, member.world_size, is_master=True, timeout=timeout,
                              master_listen_fd=sock.detach())
    else:
        store = dist.TCPStore(member.address, member.port, member.world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend_for(device), store=store, rank=member.rank, world_size=member.world_size,
                            timeout=timeout)


# How long a failing rank waits for its process group's abort before it reports the failure
# anyway (an abort stuck in a driver or a socket must not hold the error back; the gang's
# driver kills the process right after).
ABORT_WAIT_SECONDS = 10.0


def leave(failed: bool = False) -> None:
    """Leave the process group. After a failure the group is aborted, not destroyed:
    destroy_process_group waits for outstanding collectives (NCCL) that the failed peers never
    join, so it could block until the collective timeout; the abort runs in a daemon thread and
    is waited for at most ABORT_WAIT_SECONDS."""
    if not dist.is_initialized():
        return
    if not failed:
        dist.destroy_process_group()
        return

    def abort() -> None:
        from torch.distributed.distributed_c10d import _abort_process_group

        try:
            _abort_process_group()  # every group, the default one included
        except Exception:  # noqa: BLE001 - a backend without abort (gloo before it had one): destroy
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - the group is broken already; the process goes next
                pass

    t = threading.Thread(target=abort, name="lth-abort-process-group", daemon=True)
    t.start()
    t.join(ABORT_WAIT_SECONDS)


def in_gang(world_size: int) -> bool:
    return world_size > 1 and dist.is_initialized()


def from_rank0(value, world_size: int, device: torch.device):  # noqa: ANN001, ANN201
    """Rank 0's `value` on every rank (a small picklable object): what the ranks must decide
    alike from files only rank 0 is sure to see (a remote store stages them for rank 0 alone)."""
    if not in_gang(world_size):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=_object_device(device))
    return box[0]


def _object_device(device: torch.device) -> torch.device | None:
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of `tensors` in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class RankMismatch(ValueError):
    """Ranks of one gang computed different values of something they must share (a mask)."""


def check_same(what: str, digest: str, world_size: int, device: torch.device) -> None:
    """Raise RankMismatch on every rank unless every rank's `digest` of `what` is rank 0's.
    All ranks raise alike (each sees every digest), so none is left waiting in a collective."""
    if not in_gang(world_size):
        return
    digests: list = [None] * world_size
    dist.all_gather_object(digests, digest, group=None)
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise RankMismatch(
            f"{what} differs between the ranks of this gang: rank{'s' if len(differ) > 1 else ''} "
            f"{', '.join(map(str, differ))} computed another one than rank 0 "
            f"(sha256 {digests[0][:12]} on rank 0, {digests[differ[0]][:12]} on rank {differ[0]}); "
            "a job trains one mask on all its ranks: refusing to train"
        )


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank: under per_replica
    BatchNorm each rank's last forward updated its own, and a sharded evaluation must see one
    network (DDP would broadcast them again at the next training forward anyway)."""
    for b in model.buffers():
        dist.broadcast(b, src=0)


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
