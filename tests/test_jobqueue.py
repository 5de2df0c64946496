"""The scheduler's dependency bookkeeping (orchestrator/jobqueue.py), without Ray."""
from __future__ import annotations

import pytest

from orchestrator.graph import Job, Plan
from orchestrator.jobqueue import JobQueue


def _plan(edges: dict[str, tuple[str, ...]], priority: dict[str, float] | None = None) -> Plan:
    priority = priority or {}
    jobs = {j: Job(id=j, kind="train", spec=None, parents=p, priority=priority.get(j, 0.0))  # type: ignore[arg-type]
            for j, p in edges.items()}
    return Plan(experiment="x", jobs=jobs)


# a -> b -> d, a -> c -> d, e alone
EDGES = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "e": ()}


def _drain(q: JobQueue) -> list[str]:
    out = []
    while (j := q.pop()) is not None:
        out.append(j)
    return out


def test_ready_order_is_priority_then_plan_order():
    q = JobQueue(_plan(EDGES, {"e": 5.0}), done=())
    assert _drain(q) == ["e", "a"]
    assert q.pending == list(EDGES) and q.remaining == 5


def test_a_child_is_ready_when_all_its_parents_are_complete():
    q = JobQueue(_plan(EDGES), done=("a",))
    assert _drain(q) == ["b", "c", "e"]
    q.completed("b")
    assert q.pop() is None  # d still waits for c
    q.completed("c")
    assert q.pop() == "d"
    assert q.remaining == 2  # d and e


def test_failure_blocks_every_descendant_once():
    q = JobQueue(_plan(EDGES), done=())
    q.completed("a")
    assert q.fail("b") == 1  # d
    assert q.fail("c") == 0  # d, already blocked: counted once
    assert q.blocked == {"d"}
    assert q.unfinished == 1  # e: 4 jobs left, 2 failed, 1 blocked


def test_a_reopened_producer_runs_again_and_its_consumer_waits_for_it():
    q = JobQueue(_plan(EDGES), done=("a",))
    assert q.pop() == "b"  # dispatched; it finds a's output damaged
    assert not q.stale_report("a", ["b"])  # news: a is complete and b was dispatched after it
    q.reopen("a")
    q.wait_again("b")
    assert q.stale_report("a", ["c"])  # a second report while a is redone is old news
    assert _drain(q) == ["a", "e"]  # c, ready before the redo, waits for it too
    q.completed("a")
    assert _drain(q) == ["b", "c"]
    assert q.running == {"b", "c", "e"}


def test_every_pending_consumer_waits_for_a_redo_whatever_its_state():
    """Many workers: when a's output is found damaged, b is running, c is ready, d waits. None
    may run before a is redone, and none spends anything for the wait."""
    q = JobQueue(_plan(EDGES), done=("a",))
    assert q.pop() == "b"
    assert q.pop() == "c"  # c is running too
    assert not q.stale_report("a", ["c"])
    q.reopen("a")
    q.wait_again("c")
    # b's report arrives later: old news, whether a is still being redone ...
    assert q.stale_report("a", ["b"])
    assert q.pop() == "a" and q.pop() == "e" and q.pop() is None
    q.completed("a")
    # ... or already redone (b was dispatched before the redo: its report is about the old output)
    assert q.stale_report("a", ["b"])
    q.wait_again("b")
    assert sorted(_drain(q)) == ["b", "c"]
    # dispatched after the redo, a new report is news again (the new output is damaged)
    assert not q.stale_report("a", ["b"])


def test_a_consumer_that_finishes_during_a_redo_is_not_run_again():
    q = JobQueue(_plan(EDGES), done=("a",))
    assert q.pop() == "b"
    assert q.pop() == "c"
    q.reopen("a")  # reported by c
    q.wait_again("c")
    q.completed("b")  # b had verified its input before the damage: its result stands
    assert q.pop() == "a"
    q.completed("a")
    assert _drain(q) == ["c", "e"]  # b is not run again; d still waits for c
    q.completed("c")
    assert q.pop() == "d"


def test_a_retry_of_a_consumer_waits_for_a_redo():
    """A consumer that fails for its own reasons while its input is redone is retried after the
    redo, not at once against the missing input."""
    q = JobQueue(_plan(EDGES), done=("a",))
    assert q.pop() == "b" and q.pop() == "c"
    q.reopen("a")
    q.wait_again("c")
    q.push("b")  # b's worker died: a retry
    assert _drain(q) == ["a", "e"]
    q.completed("a")
    assert sorted(_drain(q)) == ["b", "c"]


def test_a_redo_of_a_job_done_before_this_run_waits_for_its_own_redone_parent():
    q = JobQueue(_plan(EDGES), done=("a", "b", "c"))
    assert q.pop() == "d"
    q.reopen("b")  # d found b's output damaged
    q.wait_again("d")
    assert q.pop() == "b"
    q.reopen("a")  # and b, redone, found a's damaged too
    q.wait_again("b")
    assert _drain(q) == ["a", "e"]
    q.completed("a")
    assert _drain(q) == ["b"]
    q.completed("b")
    assert _drain(q) == ["d"]


def test_a_failed_redo_blocks_the_consumers_waiting_for_it():
    q = JobQueue(_plan(EDGES), done=("a",))
    assert q.pop() == "b"
    q.reopen("a")
    q.wait_again("b")
    assert q.pop() == "a"
    assert q.fail("a") == 3  # b, c, d
    assert q.pop() == "e" and q.pop() is None
    assert q.unfinished == 1  # e, running
    q.completed("e")
    assert q.unfinished == 0


# ---- the scheduler's bounded wait for pack-mates (Scheduler._dispatch, without Ray) ------------


class _Pool:
    """What _dispatch asks of the actor pool: idle actors, what runs now, and whether it can take
    a call (only on an idle actor here: no call is queued behind a running one)."""

    def __init__(self, idle: int, running: list[str]):
        self.idle, self.running, self.submitted = [object()] * idle, running, []
        self.prefetch = False

    def can_take(self) -> bool:
        return bool(self.idle)

    def running_jobs(self) -> list[str]:
        return self.running

    def submit(self, jobs, attempts) -> None:
        self.idle = self.idle[1:]
        self.submitted.append(sorted(j.id for j in jobs))


def _siblings(n: int, pack: int, wait: float):
    from orchestrator.scheduler import RunOptions, Scheduler
    from trainers.jobs import DataConfig, TrainConfig, TrainJob

    cfg = TrainConfig(model="mlp_300_100", data=DataConfig(name="digits"), iterations=10)
    jobs = {f"j{i}": Job(id=f"j{i}", kind="train", spec=TrainJob(train=cfg, init_seed=i, data_seed=i), parents=())
            for i in range(n)}
    plan = Plan(experiment="x", jobs=jobs)
    sched = Scheduler(plan, store=None, options=RunOptions(pack=pack, pack_wait_seconds=wait, worker=object()))  # type: ignore[arg-type]
    return sched, JobQueue(plan, done=())


def test_a_partial_pack_waits_a_bounded_time_for_siblings_while_others_run():
    import time

    from orchestrator.scheduler import pack_wait

    assert pack_wait(2, 4, 0.0, True, 5.0) and not pack_wait(4, 4, 0.0, True, 5.0)  # full: goes now
    assert not pack_wait(2, 4, 5.0, True, 5.0) and not pack_wait(2, 4, 0.0, False, 5.0)  # waited enough / nothing runs

    sched, queue = _siblings(2, pack=4, wait=0.3)
    pool = _Pool(idle=1, running=["other"])
    sched._dispatch(pool, queue)  # a pack of 2 of 4 while another call runs: held, back in the queue
    assert pool.submitted == [] and sorted(e[2] for e in queue.ready_entries()) == ["j0", "j1"]
    time.sleep(0.35)
    sched._dispatch(pool, queue)  # the wait is bounded: it goes as it is
    assert pool.submitted == [["j0", "j1"]] and not queue

    sched, queue = _siblings(2, pack=4, wait=60.0)
    pool = _Pool(idle=1, running=[])
    sched._dispatch(pool, queue)  # nothing runs, so nothing can become ready: no wait
    assert pool.submitted == [["j0", "j1"]]

    sched, queue = _siblings(5, pack=4, wait=60.0)
    pool = _Pool(idle=2, running=["other"])
    sched._dispatch(pool, queue)  # a full pack goes at once; the fifth job waits for mates
    assert pool.submitted == [["j0", "j1", "j2", "j3"]] and [e[2] for e in queue.ready_entries()] == ["j4"]


# ---- prefetch: a job queued behind a running call (Scheduler._dispatch/_collect, without Ray) --


class _Actor:
    """A stand-in JobRunner handle: each call is a fresh ref, recorded in order."""

    def __init__(self, name: str):
        self.name, self.calls = name, []
        outer = self

        class _Method:
            def remote(self, *args):
                ref = f"{outer.name}#{len(outer.calls)}"
                outer.calls.append((ref, args))
                return ref

        self.run = self.run_pack = _Method()


def _ray_free_pool(monkeypatch, actors):
    import ray

    from orchestrator.scheduler import RunOptions, _ActorPool

    monkeypatch.setattr(ray, "kill", lambda actor, no_restart=True: None)
    pool = _ActorPool(RunOptions(worker=object()))
    pool.idle = list(actors)
    pool.size = len(actors)
    pool.prefetch = True
    return pool


def test_a_long_call_beside_short_ones_never_has_a_job_queued_behind_it(monkeypatch):
    """The pool decided for all actors at once from the last 4 calls of any actor: with one
    actor in a long job and another finishing short ones, the next ready job could be queued
    behind the long job (while the other actor went idle), which design.md rules out."""
    import time

    from orchestrator.scheduler import PREFETCH_AFTER_CALLS

    long_, short = _Actor("long"), _Actor("short")
    pool = _ray_free_pool(monkeypatch, [short, long_])
    job = Job(id="x", kind="train", spec=None, parents=())  # type: ignore[arg-type]
    pool.submit([job], [1])  # to `long`: its first call, still running
    pool.submit([job], [1])  # to `short`
    for _ in range(PREFETCH_AFTER_CALLS):
        pool.call_took(short, 0.1)
    assert pool._queueable() == [short]  # `long` has no short calls of its own
    for _ in range(PREFETCH_AFTER_CALLS):
        pool.call_took(long_, 0.1)
    assert set(pool._queueable()) == {short, long_}
    ref = next(r for r, (_, a, _) in pool._busy.items() if a is long_)
    group, actor, _ = pool._busy[ref]
    pool._busy[ref] = (group, actor, time.time() - 30.0)  # its call has run for 30 s: a long one after all
    assert pool._queueable() == [short]


def _queued_behind_a_lost_call(monkeypatch, tmp_path, first_lost_first: bool):
    import ray
    from ray.exceptions import ActorDiedError

    from orchestrator.scheduler import PREFETCH_AFTER_CALLS, RunOptions, Scheduler
    from orchestrator.store import Store

    plan = Plan(experiment="x", jobs={j: Job(id=j, kind="interpolate", spec=None, parents=())  # type: ignore[arg-type]
                                      for j in ("a", "b")})
    sched = Scheduler(plan, store=Store(str(tmp_path)), options=RunOptions(max_attempts=1, worker=object()))
    queue = JobQueue(plan, done=())
    actor = _Actor("w")
    pool = _ray_free_pool(monkeypatch, [actor])
    for _ in range(PREFETCH_AFTER_CALLS):
        pool.call_took(actor, 0.1)  # its own recent calls were short
    sched._dispatch(pool, queue)
    assert [args[0].id for _, args in actor.calls] == ["a", "b"]  # b queued behind a on the one actor

    def lost(ref):
        raise ActorDiedError()

    monkeypatch.setattr(ray, "get", lost)  # the worker was killed while it ran a
    refs = [ref for ref, _ in actor.calls]
    for ref in (refs if first_lost_first else refs[::-1]):  # (ray.wait gives them in either order)
        sched._collect(ref, pool, queue)
    return sched, queue


@pytest.mark.parametrize("first_lost_first", [True, False])
def test_a_job_queued_behind_a_lost_call_never_started_and_costs_no_attempt(monkeypatch, tmp_path, capsys,
                                                                           first_lost_first):
    """Both calls of a killed worker come back lost; the one queued behind never started, yet it
    was charged an attempt: with max_attempts 1 it failed ("1 attempt", no log) without running."""
    sched, queue = _queued_behind_a_lost_call(monkeypatch, tmp_path, first_lost_first)
    assert set(sched.summary.failed) == {"a"}  # a ran (max_attempts 1): failed
    assert sched.summary.attempts["b"] == 0 and "b" not in sched.summary.failed
    assert [e[2] for e in queue.ready_entries()] == ["b"]  # b waits for a live worker
    assert "requeue b interpolate: queued behind a call whose worker was lost" in capsys.readouterr().out
