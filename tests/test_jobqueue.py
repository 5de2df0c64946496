"""The scheduler's dependency bookkeeping (orchestrator/jobqueue.py), without Ray."""
from __future__ import annotations

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
    assert q.reopen("a") and not q.reopen("a")  # a second report does not reopen it twice
    q.wait_again("b")
    assert q.pop() == "a"  # b is not ready before a is redone
    assert [j for j in _drain(q)] == ["c", "e"]  # (c was ready before the redo: unchanged here)
    q.completed("a")
    assert q.pop() == "b"
