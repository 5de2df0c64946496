"""Deterministic kernels (`train.deterministic`, DESIGN.md "The science, precisely").

On a GPU, cuDNN and cuBLAS pick kernels that sum in a run-dependent order (atomics, split-K,
autotuning), so one job run twice ends with other weights: branch children would then differ
by kernel noise as well as by data order. A deterministic job runs with
`torch.use_deterministic_algorithms(True)`, cuDNN's deterministic kernels and no cuDNN
autotuning; cuBLAS needs `CUBLAS_WORKSPACE_CONFIG` in the environment before it creates its
first handle, which is why `prepare_process` runs when a process makes its Runtime, before any
CUDA work. On a CPU every kernel used here is deterministic already: the flag changes nothing.

`use_deterministic_algorithms(True)` also turns on
`torch.utils.deterministic.fill_uninitialized_memory`, which writes NaN (or the largest integer)
into every tensor made by `torch.empty` and friends: on CPU a stacked K=4 step went from 5 fill
kernels to 439. It guards against code that reads memory it never wrote; nothing here does
(every empty tensor is written in full before it is read), and the results are the same bits
without it (tests/test_determinism.py), so it is off inside the context and restored after.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
import torch.utils.deterministic

CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
# ":4096:8" (8 buffers of 4 MiB) is the faster of the two settings cuBLAS documents as deterministic.
CUBLAS_VALUE = ":4096:8"
_VALID = (":4096:8", ":16:8")
# What fill_uninitialized_memory is set to inside `kernels` (see the module docstring).
FILL_UNINITIALIZED = False


def prepare_process() -> None:
    """Set CUBLAS_WORKSPACE_CONFIG unless the user chose one; must run before CUDA starts (the
    variable is read when cuBLAS creates a handle), so Runtime() calls it. Harmless for
    non-deterministic jobs: it only fixes the size of cuBLAS's workspace."""
    os.environ.setdefault(CUBLAS_ENV, CUBLAS_VALUE)


@contextlib.contextmanager
def kernels(deterministic: bool, device: torch.device) -> Iterator[None]:
    """Run the block with deterministic kernels (or the fastest ones), restoring the process's
    previous settings afterwards: one worker process runs deterministic jobs and the
    non-deterministic noise-floor pairs (sweep.branch.noise_floor) one after another."""
    if deterministic and device.type == "cuda" and os.environ.get(CUBLAS_ENV) not in _VALID:
        raise RuntimeError(
            f"train.deterministic: {CUBLAS_ENV} is {os.environ.get(CUBLAS_ENV)!r}; it must be one of {_VALID} "
            "before CUDA starts (trainers.runtime.Runtime() sets it: create the Runtime before any CUDA work)"
        )
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
              torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(deterministic)
    torch.utils.deterministic.fill_uninitialized_memory = FILL_UNINITIALIZED
    torch.backends.cudnn.deterministic = deterministic
    # Autotuning times candidate kernels and keeps the fastest, which may differ between
    # processes: off whenever the bits must repeat.
    torch.backends.cudnn.benchmark = not deterministic
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic = before[1]
        torch.backends.cudnn.benchmark = before[2]
        torch.utils.deterministic.fill_uninitialized_memory = before[3]


def applied(deterministic: bool, device: torch.device) -> bool:
    """What a result records: whether its kernels were deterministic. A CPU's always are."""
    return deterministic or device.type == "cpu"
