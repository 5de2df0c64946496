"""The W&B circuit breaker of one sweep: after the first online `wandb.init` that fails (a
service that accepts connections and never answers costs W&B's own init timeout, per job), every
later job of the sweep logs offline, and the sweep says so once.

The breaker is a file beside the W&B runs, one per sweep (its name carries the sweep's token),
so the workers, which are separate processes, share it without the driver: the first worker to
create it (O_EXCL) reports the fall-back; the others see it and go offline without a word. On a
cluster whose nodes do not share that directory, each node trips its own, once. The file
remains as the record that (and why) the sweep went offline.
"""
from __future__ import annotations

import os
import time


def breaker_path(run_dir: str, sweep_token: str) -> str:
    return os.path.join(run_dir, "wandb", f"offline-since-{sweep_token}.txt")


def is_tripped(path: str | None) -> bool:
    return path is not None and os.path.exists(path)


def trip(path: str, reason: str) -> bool:
    """Open the breaker; True for the caller that opened it (the one to report it)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} W&B online failed, this sweep logs offline: {reason}\n")
    return True
