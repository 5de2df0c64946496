"""The job graph: what the planner produces and the scheduler and store consume.

A `Job` carries the trainers/ job description (`spec`) plus where its inputs come from
(`inputs`: a role in `TrainPaths`/`InterpolatePaths` -> (parent job id, artifact file name)),
plus the bookkeeping columns the `runs`/`interpolation` tables need (`meta`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trainers.jobs import InterpolateJob, TrainJob

JobKind = Literal["train", "interpolate"]


@dataclass(frozen=True)
class JobMeta:
    experiment: str
    # noise: a noise-floor child; pai: pruning at init; source: a job of a transfer's source
    # experiment (planned with its own ids); transfer: a transferred ticket or its control
    role: Literal["level", "branch", "noise", "interpolate", "pai", "source", "transfer"]
    replicate: int
    rewind_iter: int
    level: int
    data_seed: int | None  # train jobs; None for interpolate
    retrain: str
    prune_strategy: str
    density: float  # planned density (exact: pruning is deterministic)
    parent_job_id: str | None = None  # the previous level (train), None for dense runs
    pair: tuple[str, str] | None = None  # interpolate: (job_a, job_b), the two children
    config_hash: str = ""  # the experiment's resolved config (orchestrator.experiment.config_hash)
    granularity: str = "weight"  # pruning.granularity of the experiment: weight | channel
    # transfer jobs: the source level job whose ticket this is, and the source's data set and optimizer
    ticket_source: str | None = None
    ticket_source_data: str | None = None
    ticket_source_optimizer: str | None = None


@dataclass(frozen=True)
class Job:
    id: str
    kind: JobKind
    spec: TrainJob | InterpolateJob
    parents: tuple[str, ...]  # ids of jobs that must be done before this one starts
    # role -> (parent job id, artifact file name), e.g. "rewind_weights" -> (dense_id, "w_100.pt")
    inputs: dict[str, tuple[str, str]] = field(default_factory=dict)
    meta: JobMeta | None = None
    priority: float = 0.0  # larger runs first (longest remaining path, by default)


@dataclass
class Plan:
    experiment: str
    jobs: dict[str, Job]  # in a topological order (parents before children)

    def by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for job in self.jobs.values():
            counts[job.kind] = counts.get(job.kind, 0) + 1
        return counts
