"""Which jobs of a plan can run now: the dependency bookkeeping of one `lth run`, without Ray.

A job is *ready* when every parent is complete (done before this run, or by it). Ready jobs
come out highest priority first, ties in plan order; a job taken out (`pop`, `take`) is
*running* until its outcome comes back. A job that failed for good blocks its descendants.

A complete job whose output turned out damaged is taken back (`reopen`): it is ready again, and
every consumer not complete yet waits for it again, the ready ones and the running ones alike, so
no consumer runs against an output that is being redone. Reports about a producer come from the
consumers that read it; with many workers several arrive for one damage, and only the first is
news: `stale_report` tells the others (the producer is being redone now, or was redone since the
reporting job was dispatched), which cost nothing and reopen nothing.
"""
from __future__ import annotations

import heapq
from collections import defaultdict
from typing import Iterable

from orchestrator.graph import Plan


class JobQueue:
    def __init__(self, plan: Plan, done: Iterable[str]):
        self.jobs = plan.jobs
        self.complete: set[str] = set(done)
        self.failed: set[str] = set()
        self.blocked: set[str] = set()  # descendants of failed jobs
        self._order = {job_id: i for i, job_id in enumerate(self.jobs)}
        self._children: dict[str, list[str]] = defaultdict(list)
        self._waiting: dict[str, int] = {}  # job -> parents not complete
        self._ready: list[tuple[float, int, str]] = []
        self._queued: set[str] = set()  # the ids in _ready
        self.running: set[str] = set()  # taken out, outcome not back yet
        # running job -> producers reopened since it was dispatched: its reports about them are stale
        self._reopened_since: dict[str, set[str]] = {}
        for job in self.jobs.values():
            if job.id in self.complete:
                continue
            unknown = [p for p in job.parents if p not in self.jobs]
            if unknown:
                raise ValueError(f"job {job.id} depends on {unknown}, which are not in the plan")
            self._waiting[job.id] = sum(1 for p in job.parents if p not in self.complete)
            for p in job.parents:
                self._children[p].append(job.id)
        self.pending = list(self._waiting)  # the jobs this run has to do, in plan order
        self.remaining = len(self.pending)  # not complete yet (failed and blocked included)
        for job_id, n in self._waiting.items():
            if n == 0:
                self.push(job_id)

    @property
    def unfinished(self) -> int:
        """Jobs that may still run: neither complete, nor failed, nor blocked."""
        return self.remaining - len(self.failed) - len(self.blocked)

    # ---- ready jobs ----------------------------------------------------------------------

    def push(self, job_id: str) -> None:
        """`job_id` is to run (again: a retry): ready now, or, while a parent is being redone,
        once that parent is complete."""
        self.running.discard(job_id)
        self._reopened_since.pop(job_id, None)
        if self._waiting.get(job_id, 0) > 0 or job_id in self._queued or job_id in self.blocked or job_id in self.failed:
            return
        self._queued.add(job_id)
        heapq.heappush(self._ready, (-self.jobs[job_id].priority, self._order[job_id], job_id))

    def pop(self) -> str | None:
        """The highest-priority ready job, now running (None when none is ready)."""
        while self._ready:
            _, _, job_id = heapq.heappop(self._ready)
            self._queued.discard(job_id)
            if job_id not in self.blocked:
                self.running.add(job_id)
                return job_id
        return None

    def __bool__(self) -> bool:
        return bool(self._ready)

    def take(self, wanted: list[str]) -> None:
        """Take these ready jobs out (they run now, with a job already popped)."""
        taken = set(wanted)
        self._ready[:] = [e for e in self._ready if e[2] not in taken]
        heapq.heapify(self._ready)
        self._queued -= taken
        self.running |= taken

    def ready_entries(self) -> list[tuple[float, int, str]]:
        """The ready jobs as (negated priority, plan position, id): smaller sorts first."""
        return [e for e in self._ready if e[2] not in self.blocked]

    # ---- outcomes ------------------------------------------------------------------------

    def completed(self, job_id: str) -> None:
        """`job_id` is done: its children whose parents are all complete become ready."""
        self.running.discard(job_id)
        self._reopened_since.pop(job_id, None)
        # (blocked while it ran, by a producer whose redo failed: it finished from inputs it verified)
        self.blocked.discard(job_id)
        self.complete.add(job_id)
        self.remaining -= 1
        for child in self._children[job_id]:
            self._waiting[child] -= 1
            if self._waiting[child] == 0 and child not in self.running and child not in self.complete:
                self.push(child)

    def fail(self, job_id: str) -> int:
        """`job_id` failed for good: block its descendants; returns how many were newly blocked."""
        self.running.discard(job_id)
        self.failed.add(job_id)
        before = len(self.blocked)
        stack = list(self._children[job_id])
        while stack:
            child = stack.pop()
            if child not in self.blocked:
                self.blocked.add(child)
                stack.extend(self._children[child])
        return len(self.blocked) - before

    def stale_report(self, producer: str, reporters: Iterable[str]) -> bool:
        """Whether a report by the running jobs `reporters` that `producer`'s output is damaged
        is old news: `producer` is being redone now (not complete), or was redone since one of
        them was dispatched (the report is about the output before the redo)."""
        return producer not in self.complete or any(producer in self._reopened_since.get(j, ()) for j in reporters)

    def reopen(self, producer: str) -> None:
        """A complete job must run again (its output was damaged): it is ready again, and every
        consumer of it that is not complete waits for it again: a ready one leaves the ready
        jobs, a running one will wait when it comes back (`wait_again`) unless it finishes."""
        if producer not in self.complete:
            raise ValueError(f"job {producer} is not complete: it cannot be reopened")
        self.complete.discard(producer)
        self.remaining += 1
        parents = self.jobs[producer].parents
        self._waiting[producer] = sum(1 for p in parents if p not in self.complete)
        for p in parents:  # (done before this run, it was nobody's child here yet)
            if producer not in self._children[p]:
                self._children[p].append(producer)
        self.push(producer)
        for child in self._children[producer]:
            if child in self.complete:
                continue
            self._waiting[child] += 1
            if child in self.running:
                self._reopened_since.setdefault(child, set()).add(producer)
        if any(self._waiting.get(e[2], 0) > 0 for e in self._ready):
            self._ready[:] = [e for e in self._ready if self._waiting.get(e[2], 0) == 0]
            heapq.heapify(self._ready)
            self._queued = {e[2] for e in self._ready}

    def wait_again(self, job_id: str) -> None:
        """`job_id` came back without running because a parent's output is damaged or being
        redone: it waits for its parents (ready at once if they are all complete again)."""
        self.push(job_id)
