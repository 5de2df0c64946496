"""Learning rate as a pure function of the iteration.

A level that starts at iteration k calls `lr_at(k)` and sees exactly the rate the dense run had
at k: the schedule is positioned, never restarted.
"""
from __future__ import annotations

import math

from trainers.jobs import ScheduleConfig


def lr_at(cfg: ScheduleConfig, base_lr: float, total_iters: int, it: int) -> float:
    if cfg.warmup_iters > 0 and it < cfg.warmup_iters:
        return base_lr * (it + 1) / cfg.warmup_iters
    if cfg.name == "constant":
        return base_lr
    if cfg.name == "step":
        passed = sum(1 for m in cfg.milestones if it >= m)
        return base_lr * cfg.gamma**passed
    if cfg.name == "cosine":
        span = max(1, total_iters - cfg.warmup_iters)
        progress = min(1.0, (it - cfg.warmup_iters) / span)
        return cfg.min_lr + (base_lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"schedule.name: unknown schedule {cfg.name!r} (valid: constant, step, cosine)")
