"""How many loader workers a job gets: from the CPUs the job was given, never a constant.

The scheduler knows each job's CPU allotment (Ray's `num_cpus` of the actor) and passes it as
`Runtime.cpus`; a plain function call without one uses the CPUs this process may run on
(`os.sched_getaffinity`, which SLURM's and Docker's CPU sets restrict). One CPU is left to the
training loop's own thread, which launches the device's work.
"""
from __future__ import annotations

import os


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def loader_workers(cpus: int | None = None) -> int:
    """Reader/decoder workers for a job given `cpus` CPUs (None: those this process may use)."""
    if cpus is not None and cpus < 1:
        raise ValueError(f"cpus must be >= 1, got {cpus}")
    given = available_cpus() if cpus is None else cpus
    return max(1, given - 1)
