"""The explicit per-process context a job runs in (no global platform object).

A Ray actor, a benchmark or a test makes one `Runtime` and passes it to every job it runs;
it owns the device and the in-process cache of loaded data sets, so the second job of an
actor that uses the same data does not load it again.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from trainers.determinism import prepare_process
from trainers.jobs import MetricRow


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@dataclass
class Runtime:
    device: torch.device = field(default_factory=default_device)
    data_cache: dict[Any, Any] = field(default_factory=dict)
    # Called with each evaluation as it happens (live tracking); must not raise.
    on_metric: Callable[[MetricRow], None] | None = None

    def __post_init__(self) -> None:
        # before any CUDA work of this process (trainers/determinism.py says why)
        prepare_process()
