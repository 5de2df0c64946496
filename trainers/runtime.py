"""The explicit per-process context a job runs in (no global platform object).

A Ray actor, a benchmark or a test makes one `Runtime` and passes it to every job it runs;
it owns the device and the in-process cache of loaded data sets, so the second job of an
actor that uses the same data does not load it again, and knows how many CPUs the job was given
(the scheduler's allotment), from which the file loaders size their worker pools.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from trainers.data.workers import loader_workers
from trainers.determinism import prepare_process
from trainers.jobs import MetricRow


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@dataclass
class Runtime:
    device: torch.device = field(default_factory=default_device)
    data_cache: dict[Any, Any] = field(default_factory=dict)
    # (model, input shape, classes) -> why it cannot train stacked, or None (stacked.stack_problem
    # builds and runs the model to find out: once per process, not once per pack).
    stacking_checks: dict[tuple[str, tuple[int, ...], int], str | None] = field(default_factory=dict)
    # Called with each evaluation as it happens (live tracking); must not raise.
    on_metric: Callable[[MetricRow], None] | None = None
    # CPUs this job may use (Ray's num_cpus for the actor); None: those the process may run on.
    cpus: int | None = None
    # This process's place in a gang of ranks (trainers/distributed.py; the process group is
    # joined before the job). Runtime, not identity: a job's result does not depend on N beyond
    # float rounding (and on per_replica BatchNorm, which fixes N through train.bn_batch).
    rank: int = 0
    world_size: int = 1
    # Called with each iteration as it completes (a gang's progress watchdog); must not raise.
    on_step: Callable[[int], None] | None = None

    def loader_workers(self) -> int:
        """Reader threads of file-based data sets for this job (trainers/data/workers.py)."""
        return loader_workers(self.cpus)

    def __post_init__(self) -> None:
        # before any CUDA work of this process (trainers/determinism.py says why)
        prepare_process()
