"""Runs a plan on Ray: a pool of `JobRunner` actors, jobs dispatched as their parents finish.

The driver (this module) is the only writer of results: a job's Parquet rows and then its
done record, so a job is either done with all its rows or not done. Everything it needs to
resume lives in the store: rerunning after a crash of the driver skips done jobs and resumes
interrupted ones from their in-job checkpoints.

Faults: a dead actor or node (the job's process is gone) and an exception raised by the job
both cost one attempt; the job is re-queued on a live actor (a train job resumes from its
checkpoint.pt) until `max_attempts`, then recorded as failed (failed.json with the traceback)
and its descendants are blocked; the rest of the sweep goes on. An error the job's own checks
raise (bad input: `failures.classify`) comes back on every attempt and fails at once. A train
job that finishes with a non-finite loss is done but diverged (`failures.divergence`): its
descendants are blocked, never run on its NaN weights. Two errors are not the job's
and cost no attempt: a damaged input (`integrity.CorruptInput`: the file is set aside and its
producer redone first) and a storage error (`worker.StorageError`: a full or read-only store,
which every job would hit alike: the sweep stops at once and says so). While a producer is
redone, every consumer of it waits, and the further reports of the same damage (one per worker
that read it) cost nothing and count as no redo (`JobQueue.stale_report`). A job finished again
whose results differ from its published rows is refused (`rows.RowsDisagree`).

Gangs (`RunOptions.gang`: a train job on N ranks, orchestrator/gang.py): train jobs go to a
`GangLauncher` (one placement group and N actors per job), the other jobs (interpolations, on one
rank) to the pool. While a gang waits for its placement group, no new single job starts and idle
pool actors are let go, so the gang is next in line (no starvation by small jobs); one gang
reserves at a time, and placement groups are reserved whole, so no two gangs each hold half of
what both need (no deadlock). A gang's failure, however it happened, costs its job one attempt.

Packing (`RunOptions.pack` > 1): an idle actor gets the highest-priority ready job plus up to
pack - 1 other ready train jobs that can train with it as one pack (same TrainConfig, start,
end and learning-rate schedule: `trainers.packed.packing_problem`), in one `run_pack` call.
A pack not yet full waits up to `RunOptions.pack_wait_seconds` (while other calls run) for
siblings that become ready close together, rather than packing only what is ready at the same
instant (`pack_wait`). Each member is then recorded exactly like a job run alone. A failed pack costs each member
one attempt, and members retry alone, so one broken job cannot take its pack-mates down with it.
"""
from __future__ import annotations


import heapq
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from orchestrator.failures import DIVERGED, blocked_message, classify, divergence, likely_cause, one_line
from orchestrator.gang import GangLauncher, GangOutcome, GangShape
from orchestrator.graph import Job, Plan
from orchestrator.integrity import CorruptInput, seal_from_record, set_aside
from orchestrator.jobprogress import read_progress
from orchestrator.jobqueue import JobQueue
from orchestrator.progress import SweepProgress
from orchestrator.rows import RowsDisagree, result_tables, tables_of, write_job_rows
from orchestrator.schemas import TABLES
from orchestrator.store import CHECKSUMS, DONE, DamagedParts, Store
from orchestrator.worker import JobRunner, StorageError, WorkerContext

POOL_RECHECK_SECONDS = 5.0  # how often the pool is resized to the cluster (nodes come and go)
HEARTBEAT_SECONDS = 10.0
PUBLISH_EVERY_SECONDS = 120.0  # staged rows become visible in results/ at least this often
PROGRESS_POLL_SECONDS = 2.0  # how often running jobs' progress reports are read (x5 on a remote store)
# Short calls (a sweep of thousands of small jobs) would leave each worker waiting for the driver
# to record its last job and hand it the next: an actor whose recent calls all took less than
# this gets one more call queued behind the one it runs. Long jobs never are: a job queued behind
# an hour-long one could not go to an actor that frees up (or joins) meanwhile.
PREFETCH_BELOW_SECONDS = 2.0
PREFETCH_AFTER_CALLS = 4  # calls seen (all short) before prefetching starts


# Jobs that become ready close together (the same level of several lineages whose parents end
# seconds apart) still share a pack: a partial pack waits this long at most (`pack_wait`),
# against train jobs of minutes to hours.
PACK_WAIT_SECONDS = 5.0


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
    gang: GangShape | None = None  # train jobs on N ranks (num_cpus/num_gpus are then one rank's)
    # A pack not yet full waits at most this long for sibling jobs to become ready (pack_wait).
    pack_wait_seconds: float = PACK_WAIT_SECONDS


@dataclass
class RunSummary:
    planned: int
    already_done: int
    ran: list[str] = field(default_factory=list)  # jobs completed by this run
    failed: dict[str, str] = field(default_factory=dict)  # job id -> last error
    blocked: set[str] = field(default_factory=set)  # descendants of failed jobs
    diverged: dict[str, str] = field(default_factory=dict)  # job id -> why (its loss is not finite)
    attempts: dict[str, int] = field(default_factory=dict)
    done_before: set[str] = field(default_factory=set)  # done when this run started

    @property
    def reused(self) -> int:
        """Jobs done before this run and not run by it (a producer redone because its output was
        damaged ran: it is counted once, as run)."""
        return len(self.done_before - set(self.ran))

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.blocked or self.diverged else 0


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
        self._offered: dict[str, float] = {}  # job -> when an idle actor could first have taken it
        self._stored: dict[str, set[str]] = {}  # table -> jobs whose rows are staged or published
        self._last_publish = time.time()
        self._last_beat = 0.0
        self._last_running: list[str] = []
        self._redone: dict[str, int] = defaultdict(int)  # producer -> times redone for a damaged output
        self._lost_queued: dict[str, int] = defaultdict(int)  # job -> calls lost before they started (no attempt)
        self._done: set[str] | None = None  # prepare()
        self._seen_notes: set[str] = set()  # worker notes shown once each
        self._diverged_before: set[str] = set()  # done jobs that diverged (in an earlier run)
        self._last_poll = 0.0
        self._gangs: GangLauncher | None = None  # run(), when options.gang

    # ---- startup: what is done, what is missing --------------------------------------------

    def _done_jobs(self) -> set[str]:
        """Jobs with a done record (and every output this plan needs from them)."""
        listing = self.store.scan_artifacts()
        done = listing.done() & set(self.plan.jobs)
        # every done record, read once: a damaged one that no pending job reads would otherwise
        # pass for done (the README promises such a job runs again)
        for job_id, why in sorted(self.store.unreadable_done(done).items()):
            aside = set_aside(self.store, job_id, DONE)
            self.progress.log(f"corrupt {Store.artifact(job_id, DONE)} ({why}): set aside as {aside}; the job runs again")
            done.discard(job_id)
        self._diverged_before = {j for j in done if DIVERGED in listing.files.get(j, set())}
        if self.required_outputs is not None:
            for job_id in sorted(done):
                missing = self.required_outputs.get(job_id, set()) - listing.files.get(job_id, set())
                if missing:
                    # e.g. a dense run done before a new rewinding point k was added: run it
                    # again; the trainer sees its result.json and only replays up to the W_k
                    # it lacks, leaving weights.pt (which children already used) untouched
                    self.progress.log(f"rerun  {job_id}: done but lacks {sorted(missing)}")
                    seal_from_record(self.store, job_id)  # (a store from before checksums.json)
                    self.store.delete(Store.artifact(job_id, "done.json"))
                    done.discard(job_id)
                    # alone: train() adds missing W_k to a finished run, a pack returns it as is
                    self._solo.add(job_id)
        return done

    def _backfill_rows(self, done: set[str]) -> None:
        """Rows in this experiment for jobs it did not run itself: jobs done by another
        experiment sharing the store (equal work, equal id) are not redone."""
        experiment = self.plan.experiment
        rebuild: set[str] = set()  # tables that lost a damaged part file: rows to write again
        for table in TABLES:
            try:
                self._stored[table] = self.store.stored_keys(table, experiment)
            except DamagedParts as e:
                # its rows are in no other file, but every one of them is in a done record
                for rel, why in e.parts:
                    aside = self.store.set_aside_part(rel)
                    self.progress.log(f"corrupt {rel} ({one_line(why)}): set aside as {aside}; its rows are "
                                      "written again from the jobs' done records")
                rebuild.add(table)
                self._stored[table] = self.store.stored_keys(table, experiment)
        for job_id in sorted(done):  # (a copy: done loses the jobs whose record is unreadable)
            job = self.plan.jobs[job_id]
            needed = set(result_tables(job.kind)) | (rebuild & set(tables_of(job.kind)))
            if all(job_id in self._stored[t] for t in needed):
                continue
            try:
                record = self.store.done_record(job_id)
            except (ValueError, UnicodeDecodeError) as e:  # truncated or garbled: the job is not done
                aside = set_aside(self.store, job_id, DONE)
                self.progress.log(f"corrupt {Store.artifact(job_id, DONE)} ({type(e).__name__}: {e}): "
                                  f"set aside as {aside}; the job runs again")
                done.discard(job_id)
                continue
            try:
                write_job_rows(self.store, experiment, job, record, self._stored)
            except RowsDisagree as e:  # its record is not what its rows say: run it, to refuse it or not
                self.progress.log(f"rerun  {job_id}: {e}")
                done.discard(job_id)

    # ---- the loop ------------------------------------------------------------------------

    def prepare(self) -> int:
        """Read what is done (and write the rows of jobs another experiment did); returns how
        many jobs are left to run. Needs no Ray: a sweep with nothing left never starts one."""
        if self._done is None:
            self._done = self._done_jobs()
            self._backfill_rows(self._done)
            self.summary.already_done = len(self._done)
            self.summary.done_before = set(self._done)
        # jobs below a diverged one never run: a sweep with only those left needs no Ray
        probe = JobQueue(self.plan, self._done)
        for job_id in self._diverged_before & self._done:
            probe.diverged(job_id)
        return probe.unfinished

    def run(self) -> RunSummary:
        """Run every job of the plan that is not done; returns what happened."""
        self.prepare()
        assert self._done is not None
        queue = JobQueue(self.plan, self._done)
        self.summary.blocked = queue.blocked  # one set: what the queue blocks, the summary reports
        self.progress.start(total=len(self.plan.jobs), done=len(self._done),
                            work={j: _work(self.plan.jobs[j]) for j in queue.pending})
        for job_id in sorted(self._diverged_before & self._done):
            self._block_below_diverged(job_id, queue)
        if not queue.unfinished:  # (all done, or what is left is blocked below a diverged job)
            self.progress.stop()
            self._publish()
            return self.summary

        pool = _ActorPool(self.options)
        if self.options.gang is not None:
            self._gangs = self._start_gangs(pool)
        try:
            while queue.unfinished > 0:
                self._fit_pool(pool, queue)
                self._dispatch(pool, queue)
                self._beat(pool)
                for ref in pool.wait(timeout=1.0, extra=self._gangs.refs() if self._gangs else ()):
                    self._collect(ref, pool, queue)
        finally:
            if self._gangs is not None:
                self._gangs.shutdown()
            pool.shutdown()
            try:
                self.store.write_heartbeat(self.plan.experiment, [])
            except OSError:
                pass  # (a full or read-only store: the error that stopped the sweep is the one to tell)
            self.progress.stop()
            self._publish()  # failed jobs, interrupted or not: what is done becomes visible
        return self.summary

    # ---- one turn of the loop ------------------------------------------------------------

    def _fit_pool(self, pool: _ActorPool, queue: JobQueue) -> None:
        """Start actors up to what the cluster offers now (it may have grown) and the jobs left
        need: actors live for the whole sweep, their data caches with them, and are started
        before their jobs are even ready."""
        now = time.time()
        if now - pool.last_check >= POOL_RECHECK_SECONDS:
            pool.last_check = now
            pool.capacity = self._capacity()
            if pool.capacity == 0 and queue and not pool.warned:
                pool.warned = True
                self.progress.log("waiting for the cluster to offer the resources of one job "
                                  f"({self.options.num_cpus} CPUs, {self.options.num_gpus} GPUs) ...")
        if self._gangs is None:
            pool.grow(min(pool.capacity, queue.unfinished))
        else:  # single jobs only as many as are ready, and none while a gang waits for its resources
            if self._gangs.waiting():
                pool.retire_idle()
            else:
                pool.grow(min(pool.capacity, len(pool.running_jobs()) + len(self._ready_singles(queue))))
        self.progress.workers = pool.size

    def _dispatch(self, pool: _ActorPool, queue: JobQueue) -> None:
        """Give each idle actor the highest-priority ready job (with its pack-mates)."""
        attempts = self.summary.attempts
        if self._gangs is not None:
            for outcome in self._gangs.watchdog():  # gangs with a rank that stopped making progress
                self._gang_ended(outcome, queue)
            self._dispatch_gangs(queue)
        held: list[str] = []
        pool.prefetch = self._gangs is None  # (per actor: _ActorPool._queueable)
        while pool.can_take() and queue:
            job_id = queue.pop() if self._gangs is None else self._pop_single(queue)
            if job_id is None:
                break
            group = (job_id, *self._take_pack_mates(job_id, queue))
            if self._hold_for_pack_mates(group, bool(pool.running_jobs())):
                held += group
                continue
            for j in group:
                attempts[j] = attempts.get(j, 0) + 1
            pool.submit([self.plan.jobs[j] for j in group], [attempts[j] for j in group])
            self.progress.counts.running += len(group)
        for j in held:
            queue.push(j)
        self.progress.refresh()

    def _beat(self, pool: _ActorPool) -> None:
        """The heartbeat (which jobs run, for `lth status`) and the periodic publishing of rows:
        at once when the running set changed (at most every second), else every HEARTBEAT_SECONDS."""
        self._poll_progress(pool)
        now = time.time()
        running = pool.running_jobs() + (sorted(self._gangs.running_jobs()) if self._gangs else [])
        if now - self._last_beat >= HEARTBEAT_SECONDS or (running != self._last_running and now - self._last_beat >= 1.0):
            self._last_beat, self._last_running = now, running
            self.store.write_heartbeat(self.plan.experiment, running, self._gangs.running_jobs() if self._gangs else None)
            if now - self._last_publish >= PUBLISH_EVERY_SECONDS:
                self._publish()

    def _poll_progress(self, pool: _ActorPool) -> None:
        """The running train jobs' own progress reports (jobprogress.py): the live view and the ETA."""
        now = time.time()
        if now - self._last_poll < PROGRESS_POLL_SECONDS * (5 if self.store.is_remote else 1):
            return
        self._last_poll = now
        for job_id, started in pool.running_since().items():
            job = self.plan.jobs[job_id]
            if job.kind != "train":
                continue
            p = read_progress(self.store, job_id)
            if p is None or p.time < started - 2.0:  # none yet from this attempt
                continue
            self.progress.job_progress(job_id, _describe(job), "train", p.iterations_done,
                                       p.stop_iter - p.start_iter, p.rate)
        self.progress.refresh()

    def _collect(self, ref: Any, pool: _ActorPool, queue: JobQueue) -> None:
        """One finished call: an actor that came up, or a job (or pack) that ended."""
        import ray

        if self._gangs is not None and self._gangs.owns(ref):
            outcome = self._gangs.advance(ref)
            if outcome is not None:
                self._gang_ended(outcome, queue)
            return
        if pool.is_starting(ref):
            pool.started(ref)
            return
        behind = pool.queued_behind(ref)
        group, actor, started = pool.finished(ref)
        self.progress.counts.running -= len(group)
        packed = len(group) > 1
        try:
            out = ray.get(ref)
        except pool.lost_errors as exc:  # the process is gone: drop the actor, replace it at once
            pool.drop(actor, behind=behind)
            if behind and all(self._lost_queued[j] < self.options.max_attempts for j in group):
                # queued behind the call that was lost (prefetch): it never started, and costs
                # no attempt (bounded: a job that did start, mistaken for one that did not,
                # cannot come back for ever)
                for job_id in group:
                    self._lost_queued[job_id] += 1
                    self.summary.attempts[job_id] -= 1
                    queue.push(job_id)
                    self.progress.log(f"requeue {job_id} {_describe(self.plan.jobs[job_id])}: queued behind a call "
                                      f"whose worker was lost ({type(exc).__name__}); it never started, no attempt spent")
                return
            for job_id in group:
                self._retry_or_fail(job_id, f"worker lost: {type(exc).__name__}: {exc}", queue, packed=packed)
            return
        except StorageError:
            raise  # every job would fail alike: stop the sweep (the CLI says why)
        except CorruptInput as exc:  # a damaged input: redo its producer, then the job
            pool.release(actor)
            self._redo_producer(getattr(exc, "cause", exc), group, queue)
            return
        except Exception as exc:  # noqa: BLE001 - the job's own error (RayTaskError)
            pool.release(actor)
            failure = classify(exc)
            for job_id in group:  # (a pack's error may be one member's: members retry alone)
                self._retry_or_fail(job_id, failure.traceback, queue, packed=packed,
                                    retry=failure.retry or packed)
            return
        pool.release(actor)
        records = out if packed else [out]
        pool.call_took(actor, max(float(r.get("wall_seconds", PREFETCH_BELOW_SECONDS)) for r in records))
        for job_id, record in zip(group, records):
            self._record(job_id, record, started, queue)

    # ---- gangs (orchestrator/gang.py) ------------------------------------------------------

    def _start_gangs(self, pool: _ActorPool) -> GangLauncher:
        """The gang launcher, after checking that the cluster can hold one gang at all."""
        import ray

        from orchestrator.spec import SpecError

        shape = self.options.gang
        assert shape is not None
        problem = shape.problem(ray.nodes())
        if problem is not None:
            raise SpecError("resources", problem)
        return GangLauncher(shape, self.options.worker, pool.lost_errors)

    def _ready_singles(self, queue: JobQueue) -> list[tuple[float, int, str]]:
        return [e for e in queue.ready_entries() if self.plan.jobs[e[2]].kind != "train"]

    def _pop_single(self, queue: JobQueue) -> str | None:
        """The highest-priority ready job that runs on one rank (an interpolation), unless a gang
        waits for its resources (it is next in line)."""
        assert self._gangs is not None
        singles = self._ready_singles(queue)
        if not singles or self._gangs.waiting():
            return None
        job_id = min(singles)[2]
        queue.take([job_id])
        return job_id

    def _dispatch_gangs(self, queue: JobQueue) -> None:
        """The highest-priority ready train job reserves its gang, one reservation at a time."""
        assert self._gangs is not None
        if self._gangs.waiting():
            self._gangs.release_idle()  # a gang kept for reuse must not hold what the waiting one needs
        while not self._gangs.waiting():
            gangs = [e for e in queue.ready_entries() if self.plan.jobs[e[2]].kind == "train"]
            if not gangs:
                self._gangs.release_idle()  # nothing to reuse them for now
                return
            job_id = min(gangs)[2]
            queue.take([job_id])
            attempts = self.summary.attempts
            attempts[job_id] = attempts.get(job_id, 0) + 1
            self._gangs.start(self.plan.jobs[job_id], attempts[job_id])
            self.progress.counts.running += 1

    def _gang_ended(self, outcome: GangOutcome, queue: JobQueue) -> None:
        """A gang ended: its record, or one attempt spent (a retry resumes from the checkpoint)."""
        job_id = outcome.job_id
        self.progress.counts.running -= 1
        if outcome.record is not None:
            self._record(job_id, outcome.record, outcome.started, queue)
            return
        exc = outcome.error
        if isinstance(exc, StorageError):
            raise exc
        if isinstance(exc, CorruptInput):
            self._redo_producer(getattr(exc, "cause", exc), (job_id,), queue)
            return
        if outcome.lost:
            self._retry_or_fail(job_id, f"gang lost a rank: {type(exc).__name__}: {exc}", queue)
        elif isinstance(exc, BaseException):
            failure = classify(exc)
            self._retry_or_fail(job_id, failure.traceback, queue, retry=failure.retry)
        else:
            self._retry_or_fail(job_id, str(exc), queue)

    def _record(self, job_id: str, record: dict[str, Any], started: float, queue: JobQueue) -> None:
        """A job finished: its rows, then its done record (from then on it is done)."""
        if record["job_id"] != job_id:
            raise RuntimeError(f"worker returned the record of {record['job_id']} for job {job_id}")
        job = self.plan.jobs[job_id]
        record["attempts"] = self.summary.attempts[job_id]
        diverged = divergence(record["result"]) if job.kind == "train" else None
        if diverged is not None:  # before the done record: a done job's divergence is never lost
            record["diverged"] = diverged
            self.store.write_json(Store.artifact(job_id, DIVERGED), {"job_id": job_id, "reason": diverged,
                                                                     "likely_cause": likely_cause(job)})
        try:
            write_job_rows(self.store, self.plan.experiment, job, record, self._stored)
        except RowsDisagree as e:
            self._refuse(job_id, str(e), record, queue)
            return
        self.store.write_done(job_id, record)  # last: from now on the job is done
        self.summary.ran.append(job_id)
        for note in record.get("notes", []):
            if note not in self._seen_notes:  # a W&B outage would repeat itself per job
                self._seen_notes.add(note)
                self.progress.log(f"note   {job_id}: {note}")
        self.progress.counts.done += 1
        result = _key_result(record)
        if diverged is not None:
            self.summary.diverged[job_id] = diverged
            result = f"DIVERGED: {diverged}; {result}"
        # the worker's own clock: a job queued behind another did not run while it waited
        took = record.get("wall_seconds", time.time() - started)
        self.progress.job_finished(job_id, _describe(job), took, result)
        if diverged is not None:
            self._block_below_diverged(job_id, queue)
        else:
            queue.completed(job_id)

    def _block_below_diverged(self, job_id: str, queue: JobQueue) -> None:
        """A done job diverged: its descendants would train on NaN weights; block them, saying why."""
        job = self.plan.jobs[job_id]
        reason = self.summary.diverged.get(job_id)
        if reason is None:  # diverged in an earlier run
            try:
                reason = self.store.read_json(Store.artifact(job_id, DIVERGED)).get("reason", "loss not finite")
            except (OSError, ValueError):
                reason = "loss not finite"
            self.summary.diverged[job_id] = reason
        n = queue.diverged(job_id)
        self.progress.counts.blocked += n
        self.progress.drop_work(queue.blocked)
        if n:
            self.progress.log(blocked_message(job_id, _describe(job), reason, likely_cause(job), n))

    def _redo_producer(self, cause: CorruptInput, group: tuple[str, ...], queue: JobQueue) -> None:
        """A job found an input damaged: set the file aside, run its producer again, and let the
        job wait for it (it never ran: no attempt spent). With many workers, several consumers
        report one damage; only the first report is a redo: one about a producer already being
        redone, or redone since the reporting job was dispatched, costs nothing and counts nothing."""
        producer = cause.producer
        if producer in self.plan.jobs and queue.stale_report(producer, group):
            self.progress.log(f"waits  {' '.join(group)}: {producer} is being redone")
            self._wait_for_redo(group, queue)
            return
        self._redone[producer] += 1  # redos of this producer, not reports of its absence
        if producer not in self.plan.jobs or self._redone[producer] > self.options.max_attempts:
            for job_id in group:  # redoing did not help (or cannot): an ordinary failure
                self._retry_or_fail(job_id, f"corrupt input {cause}", queue)
            return
        aside = set_aside(self.store, producer, cause.name)
        if cause.name != DONE:  # the artifacts are rebuilt only when its result is gone too
            self.store.delete(Store.artifact(producer, "result.json"))
            self.store.delete(Store.artifact(producer, DONE))
        where = f"set aside as {aside}" if aside else "gone"
        self.progress.log(f"corrupt {Store.artifact(producer, cause.name)} ({cause.reason}): {where}; "
                          f"redoing {producer}")
        queue.reopen(producer)  # its other consumers, ready or running, wait for it too
        self.progress.counts.done -= 1
        self._wait_for_redo(group, queue)

    def _refuse(self, job_id: str, reason: str, record: dict[str, Any], queue: JobQueue) -> None:
        """A job finished again with results its published rows do not describe: it is not done,
        and its new outputs are set aside (`<name>.refused-...`), so that its directory never holds
        outputs other than those its rows describe. Final: running it again would do the same."""
        for name in [*record.get("checksums", {}), CHECKSUMS]:
            set_aside(self.store, job_id, name, why="refused")
        attempt = self.summary.attempts[job_id]
        self.progress.job_failed(job_id, attempt, True, reason)
        self.summary.failed[job_id] = reason
        self.progress.counts.failed += 1
        self.store.write_failed(job_id, reason, attempt)
        self.progress.counts.blocked += queue.fail(job_id)

    def _wait_for_redo(self, group: tuple[str, ...], queue: JobQueue) -> None:
        for job_id in group:
            self.summary.attempts[job_id] -= 1  # it never ran
            queue.wait_again(job_id)

    def _publish(self) -> None:
        """Each table's staged rows of this experiment into one published file (Store.publish).
        Safe here: this driver holds the experiment lock and is the only writer of its rows."""
        for table in TABLES:
            self.store.publish(table, self.plan.experiment)
        self._last_publish = time.time()

    def _retry_or_fail(self, job_id: str, error: str, queue: JobQueue, packed: bool = False,
                       retry: bool = True) -> None:
        """`retry`: False for an error that comes back on every attempt (failures.classify)."""
        if packed:
            self._solo.add(job_id)
        attempt = self.summary.attempts[job_id]
        final = not retry or attempt >= self.options.max_attempts
        line = one_line(error) + ("" if retry else " (not retried: the same input fails the same way)")
        self.progress.job_failed(job_id, attempt, final, line, _describe(self.plan.jobs[job_id]))
        if final:
            self.summary.failed[job_id] = error
            self.progress.counts.failed += 1
            self.store.write_failed(job_id, error, attempt)
            n = queue.fail(job_id)
            self.progress.counts.blocked += n
            self.progress.drop_work(queue.blocked)
            if n:
                self.progress.log(f"blocked {n} job{'s' if n != 1 else ''} below {job_id} "
                                  f"({_describe(self.plan.jobs[job_id])}), which failed: {one_line(error)}")
        else:
            queue.push(job_id)

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

    def _take_pack_mates(self, job_id: str, queue: JobQueue) -> list[str]:
        """Up to pack - 1 ready jobs to train with `job_id`, highest priority first, taken out
        of the queue; [] when packing is off or nothing fits."""
        if self.options.pack <= 1 or job_id in self._solo:
            return []
        key = self._pack_key(job_id)
        if key is None:
            return []
        fits = [e for e in queue.ready_entries() if e[2] not in self._solo and self._pack_key(e[2]) == key]
        if not fits:
            return []
        chosen = [e[2] for e in heapq.nsmallest(self.options.pack - 1, fits)]
        from trainers.packed import packing_problem

        if packing_problem([self.plan.jobs[j].spec for j in (job_id, *chosen)]) is not None:
            return []  # the key is coarser than the trainer's rule: run alone rather than fail
        queue.take(chosen)
        return chosen

    def _hold_for_pack_mates(self, group: tuple[str, ...], others_running: bool) -> bool:
        """Whether a partial pack of train jobs waits (for now) for more ready siblings."""
        if self.options.pack <= 1 or self._pack_key(group[0]) is None or group[0] in self._solo:
            return False
        now = time.time()
        first = min(self._offered.setdefault(j, now) for j in group)
        return pack_wait(len(group), self.options.pack, now - first, others_running, self.options.pack_wait_seconds)

    def _capacity(self) -> int:
        """How many job slots the cluster offers now, capped by max_workers."""
        import ray

        from orchestrator.cluster import job_slots

        return job_slots(ray.nodes(), self.options.num_cpus, self.options.num_gpus, self.options.max_workers)



class RecentCalls:
    """The last calls' own times (their workers' clocks, so time queued behind another call does
    not count): whether an actor may get a call queued behind the one it runs."""

    def __init__(self, window: int = PREFETCH_AFTER_CALLS, below: float = PREFETCH_BELOW_SECONDS):
        self.below = below
        self._seconds: deque[float] = deque(maxlen=window)

    def add(self, seconds: float) -> None:
        self._seconds.append(seconds)

    def all_short(self) -> bool:
        """A full window of calls, every one shorter than `below` (one long call stops it)."""
        return len(self._seconds) == self._seconds.maxlen and max(self._seconds) < self.below


class _ActorPool:
    """The sweep's `JobRunner` actors: starting (not yet up: a job goes only to an actor that is
    up, since one still waiting for resources, on a node that died or a join that has not
    happened, must not hold a job), idle, or busy with a call, and while calls are short
    (`prefetch`) with one more call queued behind it (Ray runs an actor's calls in order)."""

    def __init__(self, options: RunOptions):
        import ray

        self.worker = options.worker
        self.remote_cls = ray.remote(JobRunner).options(
            num_cpus=options.num_cpus,
            num_gpus=options.num_gpus,
            memory=int(options.memory_gb * 2**30) if options.memory_gb else None,
            max_restarts=0,
            max_task_retries=0,
        )
        self.lost_errors = _actor_lost_errors()
        self.idle: list[Any] = []  # up, with no call
        self._starting: dict[Any, Any] = {}  # ready ref -> actor
        self._busy: dict[Any, tuple[tuple[str, ...], Any, float]] = {}  # ref -> (job ids, actor, submit time)
        # actor -> its calls not yet collected, in the order submitted (1, or 2 with prefetch);
        # an actor with none is absent
        self._calls: dict[Any, list[Any]] = {}
        self._never_started: set[Any] = set()  # calls queued behind a call whose worker was lost
        self._dropped: set[Any] = set()
        self._recent: dict[Any, RecentCalls] = {}  # actor -> its own last calls' times
        self.prefetch = False  # set by the scheduler each turn (never beside gangs)
        self.size = 0
        self.capacity = 0  # job slots the cluster offers (Scheduler._capacity)
        self.last_check = 0.0
        self.warned = False  # "waiting for the cluster" said once

    def retire_idle(self) -> None:
        """Let the idle actors go (their resources serve a waiting gang); started again when needed."""
        import ray

        while self.idle:
            ray.kill(self.idle.pop(), no_restart=True)
            self.size -= 1

    def grow(self, target: int) -> None:
        while self.size < target:
            actor = self.remote_cls.remote(self.worker)
            self._starting[actor.info.remote()] = actor
            self.size += 1

    def call_took(self, actor: Any, seconds: float) -> None:
        """A call of `actor` ended after `seconds` of its worker's own time."""
        self._recent.setdefault(actor, RecentCalls()).add(seconds)

    def _queueable(self) -> list[Any]:
        """Actors running exactly one call, which may take a second behind it: their own last
        calls were all short, and so far the one they run is too (another actor's short calls
        say nothing of this one's: a long job beside short ones never has a job queued behind it)."""
        if not self.prefetch:
            return []
        now = time.time()
        return [a for a, calls in self._calls.items()
                if len(calls) == 1 and a not in self._dropped and a in self._recent and self._recent[a].all_short()
                and now - self._busy[calls[0]][2] < self._recent[a].below]

    def can_take(self) -> bool:
        return bool(self.idle) or bool(self._queueable())

    def submit(self, jobs: list[Any], attempts: list[int]) -> None:
        """The call goes to an idle actor, else (prefetch) behind an actor's one running call."""
        actor = self.idle.pop() if self.idle else self._queueable()[0]
        if len(jobs) == 1:
            ref = actor.run.remote(jobs[0], attempts[0])
        else:
            ref = actor.run_pack.remote(jobs, attempts)
        self._busy[ref] = (tuple(j.id for j in jobs), actor, time.time())
        self._calls.setdefault(actor, []).append(ref)

    def running_since(self) -> dict[str, float]:
        """Running (or queued behind a running call) job -> when its call was submitted."""
        return {j: t for group, _, t in self._busy.values() for j in group}

    def running_jobs(self) -> list[str]:
        return sorted(j for group, _, _ in self._busy.values() for j in group)

    def wait(self, timeout: float, extra: Any = ()) -> list[Any]:
        """Calls that finished (at most one), waiting up to `timeout` seconds; `extra`: other
        refs to wait on as well (a gang's)."""
        import ray

        refs = list(self._busy) + list(self._starting) + list(extra)
        if not refs:
            time.sleep(0.5)
            return []
        finished, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        return finished

    def is_starting(self, ref: Any) -> bool:
        return ref in self._starting

    def started(self, ref: Any) -> None:
        """An actor's start call returned: it takes jobs from now on, unless it died starting."""
        import ray

        actor = self._starting.pop(ref)
        try:
            ray.get(ref)
            self.idle.append(actor)
        except Exception:  # noqa: BLE001 - it died starting (its node is gone)
            self.drop(actor)

    def queued_behind(self, ref: Any) -> bool:
        """Whether call `ref`, if its worker was lost, never started: it was queued behind an
        earlier call of its actor that is not collected yet or was lost too. (An earlier call that
        ended but is not collected yet makes this say True of a call that did start: rare, and
        the scheduler bounds what it forgives.)"""
        _, actor, _ = self._busy[ref]
        return ref in self._never_started or self._calls[actor][0] is not ref

    def finished(self, ref: Any) -> tuple[tuple[str, ...], Any, float]:
        group, actor, submitted = self._busy.pop(ref)
        self._calls[actor].remove(ref)
        self._never_started.discard(ref)
        if not self._calls[actor]:
            del self._calls[actor]
        return group, actor, submitted

    def release(self, actor: Any) -> None:
        """The actor's call was collected and the actor lives: idle once it has no call left."""
        if actor not in self._calls and actor not in self._dropped:
            self.idle.append(actor)

    def drop(self, actor: Any, behind: bool = False) -> None:
        """The actor's process is gone (or never came up): kill it and replace it at once. A
        call queued behind the lost one is lost with it and comes back as lost too: the actor
        is counted out once. `behind`: the lost call collected now was itself queued behind
        another (else the calls still queued on the actor never started)."""
        import ray

        if not behind:
            self._never_started.update(self._calls.get(actor, []))
        if actor in self._dropped:
            return
        self._dropped.add(actor)
        self._recent.pop(actor, None)
        ray.kill(actor, no_restart=True)
        self.size -= 1
        self.last_check = 0.0

    def shutdown(self) -> None:
        import ray

        actors = set(self.idle) | set(self._starting.values()) | {a for _, a, _ in self._busy.values()}
        for actor in actors - self._dropped:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass

def pack_wait(size: int, pack: int, waited: float, others_running: bool, limit: float) -> bool:
    """Whether a pack of `size` ready jobs (at most `pack`) that has waited `waited` seconds
    should wait longer: only while it is not full, for at most `limit` seconds, and only while
    other calls run, since only a call's end makes new jobs ready."""
    return size < pack and others_running and waited < limit


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
        line = f"test accuracy {100 * result['test_accuracy']:.2f}%, density {100 * result['density']:.3g}%"
        if result.get("disconnected"):  # layer collapse: the accuracy is chance whatever training did
            line += f"; DISCONNECTED: {result.get('disconnection') or 'the mask cuts the network'}"
        return line
    barriers = {i["split"]: i["barrier"] for i in result.get("instability", [])}
    return ", ".join(f"{split} barrier {100 * b:+.2f} pp" for split, b in sorted(barriers.items()))


def _describe(job: Job) -> str:
    m = job.meta
    if m is None:
        return job.kind
    if job.kind == "interpolate":
        return f"interpolate r{m.replicate} k{m.rewind_iter} L{m.level}"
    # the family where the role and retrain mode alone would not tell it: a pruning-at-init
    # method, the random-pruning control
    role = f"pai {m.prune_strategy}" if m.role == "pai" else m.role
    if m.role == "early_bird" and m.retrain != "eb_search":  # one retrain per ticket: its fraction p (density 1 - p)
        role = f"early_bird p{round(1.0 - m.density, 6):g}"
    retrain = f"{m.retrain} random_prune" if m.prune_strategy == "random" else m.retrain
    return f"{role} r{m.replicate} k{m.rewind_iter} L{m.level} seed{m.data_seed} {retrain}"
