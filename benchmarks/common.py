"""What every benchmark shares: the measurement settings, device synchronisation, the device's
matmul rate, and the clock that times OUR training loop from the outside.

Timing `trainers.train.train` itself (not a copy of its loop) needs no hook in the trainer:
a job whose only evaluations are one-batch ones, every `window` iterations, reports each
evaluation through `rt.on_metric`, and evaluation ends in `.item()`, a device sync. The time
between the end of the evaluations at iteration i and the end of the first evaluation at
i + window is `window` training iterations plus one evaluation, whose cost the gap between
two evaluations of the same point measures. (Packed training evaluates K members in turn;
see `iteration_seconds`.)
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from trainers.jobs import MetricRow


@dataclass(frozen=True)
class Settings:
    device: torch.device
    quick: bool = False
    threads: int = 1  # CPU only: the machine is shared
    repeats: int | None = None  # interleaved rounds of the training benchmarks (None: the plan's)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = "unknown CPU"
    return f"{name} ({torch.get_num_threads()} thread(s))"


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def matmul_tflops(device: torch.device, quick: bool) -> tuple[float, str]:
    """The device's measured dense matmul rate: bf16 on CUDA, fp32 on CPU (median of repeats)."""
    if device.type == "cuda":
        n, dtype, reps = 8192, torch.bfloat16, 20
    else:
        n, dtype, reps = (1024 if quick else 2048), torch.float32, 3
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    rates = []
    for _ in range(5 if not quick else 2):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        rates.append(2 * n**3 * reps / (time.perf_counter() - t) / 1e12)
    return median(rates), f"{n}x{n} {str(dtype).removeprefix('torch.')} matmul"


def step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """FLOPs of one forward + backward training step, counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


@dataclass
class EvalClock:
    """rt.on_metric for a benchmark: remembers when each evaluation row arrived."""

    stamps: list[tuple[float, int, str]] = field(default_factory=list)

    def __call__(self, row: MetricRow) -> None:
        self.stamps.append((time.perf_counter(), row.iteration, row.split))

    def iteration_seconds(self, window: int, members: int = 1, skip_first: int = 1) -> list[float]:
        """Seconds per training iteration of each window (the first `skip_first` are warmup).

        With `members` networks evaluated in turn (test, train each), the evaluations at one
        point are 2 * members rows; a window ends with 2 * members - 1 of them.
        """
        per_point: dict[int, list[float]] = {}
        for t, it, _ in self.stamps:
            per_point.setdefault(it, []).append(t)
        points = sorted(per_point)
        out = []
        rows = 2 * members
        for a, b in zip(points, points[1:]):
            ta, tb = per_point[a], per_point[b]
            if len(ta) != rows or len(tb) != rows or b - a != window:
                continue
            one_eval = median([ta[j + 1] - ta[j] for j in range(rows - 1)])
            # From the last row at a to the next-to-last row at b: the window's iterations, then
            # every evaluation at b but the last one.
            gap = tb[-2] - ta[-1]
            out.append((gap - (rows - 1) * one_eval) / window)
        return out[skip_first:]
