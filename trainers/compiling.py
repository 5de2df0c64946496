"""torch.compile for a training job: which models get it by default, where its cache lives, and
how long the first compiled step took.

Default (`train.compile: auto` in a spec): `COMPILE_BY_DEFAULT[model]` on CUDA. It is True only
where a measurement on the GPU showed it pays end to end; every entry below is still pending that
measurement (BENCHMARKS.md, "ImageNet end to end", has the command), so auto means eager today.
Flipping an entry changes the job ids of specs that leave compile to auto: compiled kernels round
differently, so the jobs are different jobs.

Inductor's caches (FX graphs, Triton kernels, autotuning) go to node-local disk: the node's data
cache (LTH_DATA_CACHE/torchinductor) where the deployment sets one, else /tmp; so the second job
of a model on a node loads its kernels instead of compiling them again. An explicit
TORCHINDUCTOR_CACHE_DIR is left as it is.
"""
from __future__ import annotations

import getpass
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
DATA_CACHE_ENV = "LTH_DATA_CACHE"  # the node-local directory orchestrator/cluster.py copies data sets into

# model -> compile when the spec says auto. Pending measurement (BENCHMARKS.md): all False.
COMPILE_BY_DEFAULT: dict[str, bool] = {
    "resnet18": False,  # pending: end-to-end JPEG rate, eager vs compiled, on an H100
    "resnet50": False,  # pending: as resnet18 (the device-resident rate alone gained 1.4x, issue 12)
}


def compile_by_default(model: str) -> bool:
    return COMPILE_BY_DEFAULT.get(model, False)


def inductor_cache_dir() -> str:
    """Where Inductor caches compiled kernels on this node (set before the first compile)."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get(DATA_CACHE_ENV)
    if base:
        return os.path.join(base, "torchinductor")
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return os.path.join("/tmp", f"torchinductor-lth-{user}")


class _TimedFirstStep:
    """The compiled model; reports how long the first step took (the compile, mostly): the time
    from the first forward call to the second (forward, backward and optimizer step of step one)."""

    def __init__(self, compiled: Callable[..., Any], cache_dir: str, log: Callable[[str], None]):
        self._compiled, self.cache_dir, self._log = compiled, cache_dir, log
        self._calls = 0
        self._t0 = 0.0
        self.first_step_seconds: float | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._calls += 1
        if self._calls == 1:
            self._t0 = time.perf_counter()
        elif self._calls == 2:
            self.first_step_seconds = time.perf_counter() - self._t0
            self._log(f"torch.compile: first step took {self.first_step_seconds:.1f} s (cache: {self.cache_dir})")
        return self._compiled(*args, **kwargs)


def compiled(model: torch.nn.Module, log: Callable[[str], None] | None = None) -> _TimedFirstStep:
    """torch.compile(model) with its cache on node-local disk and its first step timed."""
    import torch  # here, not at the top: the planner reads COMPILE_BY_DEFAULT without torch

    cache = inductor_cache_dir()
    os.makedirs(cache, exist_ok=True)
    os.environ.setdefault(CACHE_ENV, cache)  # Inductor reads it when it first writes a cache entry
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    return _TimedFirstStep(torch.compile(model), cache, say)
