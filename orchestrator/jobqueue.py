"""Which jobs of a plan can run now: the dependency bookkeeping of one `lth run`, without Ray.

A job is *ready* when every parent is complete (done before this run, or by it). Ready jobs
come out highest priority first, ties in plan order. A job that failed for good blocks its
descendants; a complete job whose output turned out damaged can be taken back (`reopen`), and
the jobs that wait for it wait again.
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
        heapq.heappush(self._ready, (-self.jobs[job_id].priority, self._order[job_id], job_id))

    def pop(self) -> str | None:
        """The highest-priority ready job (None when none is ready)."""
        while self._ready:
            _, _, job_id = heapq.heappop(self._ready)
            if job_id not in self.blocked:
                return job_id
        return None

    def __bool__(self) -> bool:
        return bool(self._ready)

    def take(self, wanted: list[str]) -> None:
        """Take these ready jobs out (they run now, with a job already popped)."""
        taken = set(wanted)
        self._ready[:] = [e for e in self._ready if e[2] not in taken]
        heapq.heapify(self._ready)

    def ready_entries(self) -> list[tuple[float, int, str]]:
        """The ready jobs as (negated priority, plan position, id): smaller sorts first."""
        return [e for e in self._ready if e[2] not in self.blocked]

    # ---- outcomes ------------------------------------------------------------------------

    def completed(self, job_id: str) -> None:
        """`job_id` is done: its children whose parents are all complete become ready."""
        self.complete.add(job_id)
        self.remaining -= 1
        for child in self._children[job_id]:
            self._waiting[child] -= 1
            if self._waiting[child] == 0 and child not in self.blocked:
                self.push(child)

    def fail(self, job_id: str) -> int:
        """`job_id` failed for good: block its descendants; returns how many were newly blocked."""
        self.failed.add(job_id)
        before = len(self.blocked)
        stack = list(self._children[job_id])
        while stack:
            child = stack.pop()
            if child not in self.blocked:
                self.blocked.add(child)
                stack.extend(self._children[child])
        return len(self.blocked) - before

    def reopen(self, producer: str) -> bool:
        """A complete job must run again (its output was damaged): it is ready again, and jobs
        consuming it wait for it. False when it was not complete (already reopened)."""
        if producer not in self.complete:
            return False
        self.complete.discard(producer)
        self.remaining += 1
        self.push(producer)
        return True

    def wait_again(self, job_id: str) -> None:
        """`job_id` was dispatched but a parent is being redone: it waits for its parents again
        (and is ready at once if they are all complete)."""
        parents = self.jobs[job_id].parents
        self._waiting[job_id] = sum(1 for p in parents if p not in self.complete)
        for p in parents:
            if p not in self.complete and job_id not in self._children[p]:
                self._children[p].append(job_id)
        if self._waiting[job_id] == 0:
            self.push(job_id)
