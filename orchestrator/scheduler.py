"""Runs a plan on Ray: a pool of `JobRunner` actors, jobs dispatched as their parents finish.

The driver (this module) is the only writer of results: a job's Parquet rows and then its
done record, so a job is either done with all its rows or not done. Everything it needs to
resume lives in the store: rerunning after a crash of the driver skips done jobs and resumes
interrupted ones from their in-job checkpoints.

Faults: a dead actor or node (the job's process is gone) and an exception raised by the job
both cost one attempt; the job is re-queued on a live actor (a train job resumes from its
checkpoint.pt) until `max_attempts`, then recorded as failed (failed.json with the traceback)
and its descendants are blocked; the rest of the sweep goes on. Two errors are not the job's
and cost no attempt: a damaged input (`integrity.CorruptInput`: the file is set aside and its
producer redone first) and a storage error (`worker.StorageError`: a full or read-only store,
which every job would hit alike: the sweep stops at once and says so).

Packing (`RunOptions.pack` > 1): an idle actor gets the highest-priority ready job plus up to
pack - 1 other ready train jobs that can train with it as one pack (same TrainConfig, start,
end and learning-rate schedule: `trainers.packed.packing_problem`), in one `run_pack` call.
Each member is then recorded exactly like a job run alone. A failed pack costs each member
one attempt, and members retry alone, so one broken job cannot take its pack-mates down with it.
"""
from __future__ import annotations

import heapq
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from orchestrator.graph import Job, Plan
from orchestrator.integrity import CorruptInput, set_aside
from orchestrator.progress import SweepProgress
from orchestrator.rows import result_tables, write_job_rows
from orchestrator.schemas import TABLES
from orchestrator.store import DONE, Store
from orchestrator.worker import JobRunner, StorageError, WorkerContext

POOL_RECHECK_SECONDS = 5.0  # how often the pool is resized to the cluster (nodes come and go)
HEARTBEAT_SECONDS = 10.0
PUBLISH_EVERY_SECONDS = 120.0  # staged rows become visible in results/ at least this often


@dataclass(frozen=True)
class RunOptions:
    address: str | None = None  # None: start a local Ray; "auto", "host:port", "ray://..."
    num_cpus: float = 1.0  # per job
    num_gpus: float = 0.0  # per job, may be fractional
    memory_gb: float | None = None
    max_attempts: int = 3
    max_workers: int | None = None
    worker: WorkerContext | None = None
    pack: int = 1  # train jobs per actor call (resources.pack); 1: every job alone


@dataclass
class RunSummary:
    planned: int
    already_done: int
    ran: list[str] = field(default_factory=list)  # jobs completed by this run
    failed: dict[str, str] = field(default_factory=dict)  # job id -> last error
    blocked: set[str] = field(default_factory=set)  # descendants of failed jobs
    attempts: dict[str, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.blocked else 0


def _actor_lost_errors() -> tuple[type[BaseException], ...]:
    """Errors meaning the process running a job is gone (not the job's own exception)."""
    from ray import exceptions as rex

    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "NodeDiedError", "WorkerCrashedError",
             "ObjectLostError", "OwnerDiedError", "LocalRayletDiedError", "TaskUnschedulableError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


class Scheduler:
    def __init__(
        self,
        plan: Plan,
        store: Store,
        options: RunOptions,
        progress: SweepProgress | None = None,
        required_outputs: dict[str, set[str]] | None = None,
    ):
        if options.worker is None:
            raise ValueError("RunOptions.worker: the actors' WorkerContext is required")
        self.plan = plan
        self.store = store
        self.options = options
        self.progress = progress or SweepProgress(plan.experiment, live=False)
        self.required_outputs = required_outputs
        self.summary = RunSummary(planned=len(plan.jobs), already_done=0)
        if options.pack < 1:
            raise ValueError(f"RunOptions.pack must be at least 1, got {options.pack}")
        self._solo: set[str] = set()  # jobs never packed (retries of failed packs, reruns)
        self._pack_keys: dict[str, Any] = {}
        self._stored: dict[str, set[str]] = {}  # table -> jobs whose rows are staged or published
        self._last_publish = time.time()
        self._done: set[str] | None = None  # prepare()
        self._seen_notes: set[str] = set()  # worker notes shown once each

    # ---- startup: what is done, what is missing --------------------------------------------

    def _done_jobs(self) -> set[str]:
        """Jobs with a done record (and every output this plan needs from them)."""
        listing = self.store.scan_artifacts()
        done = listing.done() & set(self.plan.jobs)
        if self.required_outputs is not None:
            for job_id in sorted(done):
                missing = self.required_outputs.get(job_id, set()) - listing.files.get(job_id, set())
                if missing:
                    # e.g. a dense run done before a new rewinding point k was added: run it
                    # again; the trainer sees its result.json and only replays up to the W_k
                    # it lacks, leaving weights.pt (which children already used) untouched
                    self.progress.log(f"rerun  {job_id}: done but lacks {sorted(missing)}")
                    self.store.delete(Store.artifact(job_id, "done.json"))
                    done.discard(job_id)
                    # alone: train() adds missing W_k to a finished run, a pack returns it as is
                    self._solo.add(job_id)
        return done

    def _backfill_rows(self, done: set[str]) -> None:
        """Rows in this experiment for jobs it did not run itself: jobs done by another
        experiment sharing the store (equal work, equal id) are not redone."""
        experiment = self.plan.experiment
        self._stored = {table: self.store.stored_keys(table, experiment) for table in TABLES}
        for job_id in sorted(done):  # (a copy: done loses the jobs whose record is unreadable)
            job = self.plan.jobs[job_id]
            if all(job_id in self._stored[t] for t in result_tables(job.kind)):
                continue
            try:
                record = self.store.done_record(job_id)
            except (ValueError, UnicodeDecodeError) as e:  # truncated or garbled: the job is not done
                aside = set_aside(self.store, job_id, DONE)
                self.progress.log(f"corrupt {Store.artifact(job_id, DONE)} ({type(e).__name__}: {e}): "
                                  f"set aside as {aside}; the job runs again")
                done.discard(job_id)
                continue
            write_job_rows(self.store, experiment, job, record, self._stored)

    # ---- the loop ------------------------------------------------------------------------

    def prepare(self) -> int:
        """Read what is done (and write the rows of jobs another experiment did); returns how
        many jobs are left to run. Needs no Ray: a sweep with nothing left never starts one."""
        if self._done is None:
            self._done = self._done_jobs()
            self._backfill_rows(self._done)
            self.summary.already_done = len(self._done)
        return len(self.plan.jobs) - len(self._done)

    def run(self) -> RunSummary:
        self.prepare()
        jobs = self.plan.jobs
        done = self._done
        assert done is not None

        children: dict[str, list[str]] = defaultdict(list)
        waiting: dict[str, int] = {}
        for job in jobs.values():
            if job.id in done:
                continue
            unknown = [p for p in job.parents if p not in jobs]
            if unknown:
                raise ValueError(f"job {job.id} depends on {unknown}, which are not in the plan")
            waiting[job.id] = sum(1 for p in job.parents if p not in done)
            for p in job.parents:
                children[p].append(job.id)
        order = {job_id: i for i, job_id in enumerate(jobs)}
        ready: list[tuple[float, int, str]] = []
        for job_id, n in waiting.items():
            if n == 0:
                heapq.heappush(ready, (-jobs[job_id].priority, order[job_id], job_id))

        self.progress.start(total=len(jobs), done=len(done), work={j: _work(jobs[j]) for j in waiting})
        if not waiting:
            self.progress.stop()
            self._publish()
            return self.summary

        import ray

        remote_cls = ray.remote(JobRunner).options(
            num_cpus=self.options.num_cpus,
            num_gpus=self.options.num_gpus,
            memory=int(self.options.memory_gb * 2**30) if self.options.memory_gb else None,
            max_restarts=0,
            max_task_retries=0,
        )
        lost_errors = _actor_lost_errors()
        idle: list[Any] = []
        starting: dict[Any, Any] = {}  # ready ref -> actor not yet running (it may wait for a node)
        busy: dict[Any, tuple[tuple[str, ...], Any, float]] = {}  # ref -> (job ids, actor, start time)
        n_actors = 0
        attempts = self.summary.attempts
        last_pool = last_beat = 0.0
        last_running: list[str] = []
        capacity = 0
        warned_capacity = False
        remaining = len(waiting)

        def block_descendants(job_id: str) -> None:
            stack = list(children[job_id])
            while stack:
                child = stack.pop()
                if child not in self.summary.blocked:
                    self.summary.blocked.add(child)
                    self.progress.counts.blocked += 1
                    stack.extend(children[child])

        redone: dict[str, int] = defaultdict(int)
        complete = set(done)  # done before this run, or by it

        def redo_producer(cause: CorruptInput, group: tuple[str, ...]) -> None:
            nonlocal remaining
            producer = cause.producer
            redone[producer] += 1
            if producer not in jobs or redone[producer] > self.options.max_attempts:
                for job_id in group:  # redoing did not help (or cannot): an ordinary failure
                    self._retry_or_fail(job_id, f"corrupt input {cause}", ready, order, block_descendants)
                return
            aside = set_aside(self.store, producer, cause.name)
            if cause.name != DONE:  # the artifacts are rebuilt only when its result is gone too
                self.store.delete(Store.artifact(producer, "result.json"))
                self.store.delete(Store.artifact(producer, DONE))
            where = f"set aside as {aside}" if aside else "gone"
            self.progress.log(f"corrupt {Store.artifact(producer, cause.name)} ({cause.reason}): {where}; "
                              f"redoing {producer}")
            if producer in complete:  # (not when a sibling already asked for it)
                complete.discard(producer)
                remaining += 1
                self.progress.counts.done -= 1
                heapq.heappush(ready, (-jobs[producer].priority, order[producer], producer))
            for job_id in group:
                attempts[job_id] -= 1  # it never ran: no attempt spent
                waiting[job_id] = sum(1 for p in jobs[job_id].parents if p not in complete)
                for p in jobs[job_id].parents:
                    if p not in complete and job_id not in children[p]:
                        children[p].append(job_id)
                if waiting[job_id] == 0:
                    heapq.heappush(ready, (-jobs[job_id].priority, order[job_id], job_id))

        try:
            while remaining > len(self.summary.failed) + len(self.summary.blocked):
                now = time.time()
                if now - last_pool >= POOL_RECHECK_SECONDS:  # the cluster may have grown
                    last_pool = now
                    capacity = self._capacity()
                    if capacity == 0 and ready and not warned_capacity:
                        warned_capacity = True
                        self.progress.log("waiting for the cluster to offer the resources of one job "
                                          f"({self.options.num_cpus} CPUs, {self.options.num_gpus} GPUs) ...")
                # actors live for the whole sweep (their data caches with them): start as many
                # as the cluster and the jobs left allow, before their jobs are even ready
                unfinished = remaining - len(self.summary.failed) - len(self.summary.blocked)
                while n_actors < min(capacity, unfinished):
                    # a job goes only to an actor that is up: one still waiting for resources
                    # (a node that died, a join that has not happened) must not hold a job
                    actor = remote_cls.remote(self.options.worker)
                    starting[actor.info.remote()] = actor
                    n_actors += 1
                self.progress.workers = n_actors

                while idle and ready:
                    _, _, job_id = heapq.heappop(ready)
                    if job_id in self.summary.blocked:
                        continue
                    actor = idle.pop()
                    group = (job_id, *self._take_pack_mates(job_id, ready))
                    for j in group:
                        attempts[j] = attempts.get(j, 0) + 1
                    if len(group) == 1:
                        ref = actor.run.remote(jobs[job_id], attempts[job_id])
                    else:
                        ref = actor.run_pack.remote([jobs[j] for j in group], [attempts[j] for j in group])
                    busy[ref] = (group, actor, time.time())
                    self.progress.counts.running += len(group)
                self.progress.refresh()

                running_now = sorted(j for g, _, _ in busy.values() for j in g)
                # at once when the running set changed (at most every second), else every HEARTBEAT_SECONDS
                if now - last_beat >= HEARTBEAT_SECONDS or (running_now != last_running and now - last_beat >= 1.0):
                    last_beat, last_running = now, running_now
                    self.store.write_heartbeat(self.plan.experiment, [j for g, _, _ in busy.values() for j in g])
                    if now - self._last_publish >= PUBLISH_EVERY_SECONDS:
                        self._publish()

                if not busy and not starting:
                    time.sleep(0.5)
                    continue
                finished, _ = ray.wait(list(busy) + list(starting), num_returns=1, timeout=1.0)
                for ref in finished:
                    if ref in starting:  # an actor is up: from now on it takes jobs
                        actor = starting.pop(ref)
                        try:
                            ray.get(ref)
                            idle.append(actor)
                        except Exception:  # noqa: BLE001 - it died starting (its node is gone)
                            ray.kill(actor, no_restart=True)
                            n_actors -= 1
                            last_pool = 0.0
                        continue
                    group, actor, started = busy.pop(ref)
                    self.progress.counts.running -= len(group)
                    try:
                        out = ray.get(ref)
                    except lost_errors as exc:  # the process is gone: drop the actor
                        ray.kill(actor, no_restart=True)
                        n_actors -= 1
                        last_pool = 0.0  # replace it at once
                        for job_id in group:
                            self._retry_or_fail(job_id, f"worker lost: {type(exc).__name__}: {exc}", ready, order,
                                                block_descendants, packed=len(group) > 1)
                        continue
                    except StorageError:
                        raise  # every job would fail alike: stop the sweep (the CLI says why)
                    except CorruptInput as exc:  # a damaged input: redo its producer, then the job
                        idle.append(actor)
                        redo_producer(getattr(exc, "cause", exc), group)
                        continue
                    except Exception as exc:  # noqa: BLE001 - the job's own error (RayTaskError)
                        idle.append(actor)
                        for job_id in group:
                            self._retry_or_fail(job_id, _task_traceback(exc), ready, order, block_descendants,
                                                packed=len(group) > 1)
                        continue
                    idle.append(actor)
                    records = out if len(group) > 1 else [out]
                    for job_id, record in zip(group, records):
                        if record["job_id"] != job_id:
                            raise RuntimeError(f"worker returned the record of {record['job_id']} for job {job_id}")
                        job = jobs[job_id]
                        record["attempts"] = attempts[job_id]
                        write_job_rows(self.store, self.plan.experiment, job, record, self._stored)
                        self.store.write_done(job_id, record)  # last: from now on the job is done
                        self.summary.ran.append(job_id)
                        complete.add(job_id)
                        for note in record.get("notes", []):
                            if note not in self._seen_notes:  # a W&B outage would repeat itself per job
                                self._seen_notes.add(note)
                                self.progress.log(f"note   {job_id}: {note}")
                        self.progress.counts.done += 1
                        remaining -= 1
                        self.progress.job_finished(job_id, _describe(job), time.time() - started, _key_result(record))
                        for child in children[job_id]:
                            waiting[child] -= 1
                            if waiting[child] == 0 and child not in self.summary.blocked:
                                heapq.heappush(ready, (-jobs[child].priority, order[child], child))
        finally:
            for actor in idle + list(starting.values()) + [a for _, a, _ in busy.values()]:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            try:
                self.store.write_heartbeat(self.plan.experiment, [])
            except OSError:
                pass  # (a full or read-only store: the error that stopped the sweep is the one to tell)
            self.progress.stop()
            self._publish()  # failed jobs, interrupted or not: what is done becomes visible
        return self.summary

    def _publish(self) -> None:
        """Each table's staged rows of this experiment into one published file (Store.publish).
        Safe here: this driver holds the experiment lock and is the only writer of its rows."""
        for table in TABLES:
            self.store.publish(table, self.plan.experiment)
        self._last_publish = time.time()

    def _retry_or_fail(self, job_id: str, error: str, ready: list, order: dict, block: Callable[[str], None],
                       packed: bool = False) -> None:
        if packed:
            self._solo.add(job_id)
        attempt = self.summary.attempts[job_id]
        final = attempt >= self.options.max_attempts
        self.progress.job_failed(job_id, attempt, final, error.strip().splitlines()[-1] if error.strip() else "?")
        if final:
            self.summary.failed[job_id] = error
            self.progress.counts.failed += 1
            self.store.write_failed(job_id, error, attempt)
            block(job_id)
        else:
            heapq.heappush(ready, (-self.plan.jobs[job_id].priority, order[job_id], job_id))

    def _pack_key(self, job_id: str) -> Any:
        """Jobs with equal keys can be packed (what `packing_problem` compares, as one hashable
        value, so a pack is found in one pass over the ready jobs); None: never packed."""
        if job_id not in self._pack_keys:
            job = self.plan.jobs[job_id]
            key = None
            if job.kind == "train":
                spec = job.spec
                fixed_lr = spec.retrain == "finetune" and spec.prune is not None
                key = (spec.train, spec.start_iter, spec.stop_iter, spec.finetune_lr if fixed_lr else None)
            self._pack_keys[job_id] = key
        return self._pack_keys[job_id]

    def _take_pack_mates(self, job_id: str, ready: list[tuple[float, int, str]]) -> list[str]:
        """Up to pack - 1 ready jobs to train with `job_id`, highest priority first, taken out
        of `ready`; [] when packing is off or nothing fits."""
        if self.options.pack <= 1 or job_id in self._solo:
            return []
        key = self._pack_key(job_id)
        if key is None:
            return []
        blocked = self.summary.blocked
        fits = [e for e in ready if e[2] not in self._solo and e[2] not in blocked and self._pack_key(e[2]) == key]
        if not fits:
            return []
        chosen = heapq.nsmallest(self.options.pack - 1, fits)
        from trainers.packed import packing_problem

        if packing_problem([self.plan.jobs[j].spec for j in (job_id, *(e[2] for e in chosen))]) is not None:
            return []  # the key is coarser than the trainer's rule: run alone rather than fail
        taken = {e[2] for e in chosen}
        ready[:] = [e for e in ready if e[2] not in taken]
        heapq.heapify(ready)
        return [e[2] for e in chosen]

    def _capacity(self) -> int:
        """How many job slots the cluster offers now, capped by max_workers."""
        import ray

        from orchestrator.cluster import job_slots

        return job_slots(ray.nodes(), self.options.num_cpus, self.options.num_gpus, self.options.max_workers)


def _task_traceback(exc: BaseException) -> str:
    """The job's own traceback (a RayTaskError carries the remote one)."""
    return getattr(exc, "traceback_str", None) or "".join(traceback.format_exception(exc))


def _work(job: Job) -> tuple[str, float]:
    """(kind, units of work) of a job, for the ETA: iterations to train, or points to evaluate."""
    if job.kind == "train":
        return "train", float(max(1, job.spec.stop_iter - job.spec.start_iter))
    return job.kind, float(getattr(job.spec, "num_alphas", 1))


def _key_result(record: dict[str, Any]) -> str:
    """What a person wants to see on a job's done line."""
    result = record.get("result") or {}
    if record.get("kind") == "train" and "test_accuracy" in result:
        # the report's units: percent, and percentage points for barriers
        return f"test accuracy {100 * result['test_accuracy']:.2f}%, density {100 * result['density']:.3g}%"
    barriers = {i["split"]: i["barrier"] for i in result.get("instability", [])}
    return ", ".join(f"{split} barrier {100 * b:+.2f} pp" for split, b in sorted(barriers.items()))


def _describe(job: Job) -> str:
    m = job.meta
    if m is None:
        return job.kind
    if job.kind == "interpolate":
        return f"interpolate r{m.replicate} k{m.rewind_iter} L{m.level}"
    return f"{m.role} r{m.replicate} k{m.rewind_iter} L{m.level} seed{m.data_seed} {m.retrain}"
