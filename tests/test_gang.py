"""Train jobs as gangs of ranks on Ray (orchestrator/gang.py), end to end on CPU with gloo: the
demo sweep on 2 ranks against 1 rank, a rank killed mid-job, a hung rank, bad gangs refused.
(A gang across two nodes of a loopback cluster: tests/test_multinode.py.)"""
from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import torch

from conftest import DEMO, tiny_args
from orchestrator.cli import main
from orchestrator.gang import GangLauncher
from orchestrator.planner import plan
from orchestrator.spec import load_spec
from trainers import checkpoint

# The tiny demo, smaller still: the dense run, one level, two branch children of the dense
# network and their interpolation (4 train jobs, 1 interpolate job).
SMALL = ("pruning.levels=1", "sweep.rewind_iters=[0]", "sweep.branch.levels=[0]")
# Only the dense run (40 iterations, a checkpoint every 10).
ONE_JOB = ("pruning.levels=0", "sweep.rewind_iters=[0]", "sweep.branch.seeds=[]", "sweep.branch.levels=[0]")
TWO_RANKS = ("resources.ranks=2", "resources.cpus=2")


def _run(store: Path, *extra: str) -> int:
    return main(["run", DEMO, "--store", str(store), *tiny_args(*extra)])


def _runs(store: Path) -> dict[str, dict]:
    rows = ds.dataset(str(store / "results" / "runs"), partitioning="hive").to_table().to_pylist()
    return {r["job_id"]: r for r in rows}


def _job_ids(*extra: str) -> list[str]:
    return list(plan(load_spec(DEMO, [a for a in tiny_args(*extra) if a != "--set"])).jobs)


def test_two_rank_sweep_matches_one_rank_within_noise(ray_session, tmp_path):
    """The same jobs (N is not in the id) on 2 ranks: every job done once, world_size 2 in runs,
    and each test accuracy within the sweep's own noise of the 1-rank run's. Noise here is
    measured, not assumed: the two branch children of one network differ only in data order,
    and their accuracy gap is what an irrelevant perturbation moves a job by; float rounding
    (2 ranks sum the gradient in another order) must move it by no more than that, nor by more
    than 2 of the 360 test examples when that gap happens to be smaller."""
    assert _run(tmp_path / "one", *SMALL) == 0
    assert _run(tmp_path / "two", *SMALL, *TWO_RANKS) == 0
    one, two = _runs(tmp_path / "one"), _runs(tmp_path / "two")
    train_ids = {j.id for j in plan(load_spec(DEMO, [a for a in tiny_args(*SMALL) if a != "--set"])).jobs.values()
                 if j.kind == "train"}
    assert set(one) == set(two) == train_ids
    assert {r["world_size"] for r in one.values()} == {1} and {r["world_size"] for r in two.values()} == {2}
    children = [r["test_accuracy"] for r in one.values() if r["role"] == "branch"]
    noise = max(abs(children[0] - children[1]), 2 / 360)
    for job_id, r in one.items():
        assert abs(r["test_accuracy"] - two[job_id]["test_accuracy"]) <= noise + 1e-12, (job_id, r, two[job_id])
        assert two[job_id]["attempts"] == 1


@pytest.fixture(scope="module")
def uninterrupted(ray_session, tmp_path_factory):
    store = tmp_path_factory.mktemp("gang-ref") / "store"
    assert _run(store, *ONE_JOB, *TWO_RANKS) == 0
    (job_id,) = _job_ids(*ONE_JOB)
    return checkpoint.load_weights(str(store / "artifacts" / job_id / "weights.pt"))


def _equal_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_killed_rank_costs_one_attempt_and_the_retry_resumes_to_the_same_weights(uninterrupted, tmp_path, monkeypatch):
    """Rank 1's process exits after iteration 25 (a checkpoint at 20): the driver ends the gang
    within 60 s of the exit (measured: the README's reliability section), one attempt counted, and the retry resumes from rank 0's checkpoint; the final weights are
    bitwise those of an uninterrupted 2-rank run (gloo sums in a fixed order at fixed N)."""
    (job_id,) = _job_ids(*ONE_JOB)
    mark = tmp_path / "killed_at"  # the rank writes the time just before it exits
    monkeypatch.setenv("LTH_FAULT_INJECT", f"kill:{job_id}:1:25:{mark}")
    ended = []  # (when, error) of each gang the driver ended with an error
    real_end = GangLauncher._end

    def timed_end(self, gang, record=None, error=None, lost=False):  # noqa: ANN001, ANN202
        if error is not None:
            ended.append((time.time(), error))
        return real_end(self, gang, record=record, error=error, lost=lost)

    monkeypatch.setattr(GangLauncher, "_end", timed_end)
    assert _run(tmp_path / "store", *ONE_JOB, *TWO_RANKS) == 0
    # the driver recorded the failure within the bound the README states (default timeouts)
    assert len(ended) == 1
    recorded_after = ended[0][0] - float(mark.read_text())
    print(f"\nrank 1 killed; the driver ended the gang {recorded_after:.2f} s later ({ended[0][1]!r:.120})")
    assert 0 <= recorded_after < 60
    d = tmp_path / "store" / "artifacts" / job_id
    done = json.loads((d / "done.json").read_text())
    assert done["attempts"] == 2 and done["world_size"] == 2
    assert done["result"]["resumed_from"] == 20
    assert _equal_weights(checkpoint.load_weights(str(d / "weights.pt")), uninterrupted)


def test_a_hung_rank_is_detected_and_the_job_retried_in_bounded_time(uninterrupted, tmp_path, monkeypatch):
    """Rank 1 sleeps for good after iteration 25: rank 0 waits in an all-reduce until the process
    group's timeout (scheduler.gang_timeout_seconds, 10 s here) or the watchdog ends the gang; the
    retry finishes the job, equal to the uninterrupted run. Bounded: the whole sweep, two gang
    starts included, well under the test's limit."""
    (job_id,) = _job_ids(*ONE_JOB)
    monkeypatch.setenv("LTH_FAULT_INJECT", f"hang:{job_id}:1:25")
    started = time.time()
    assert _run(tmp_path / "store", *ONE_JOB, *TWO_RANKS, "scheduler.gang_timeout_seconds=10") == 0
    assert time.time() - started < 120
    d = tmp_path / "store" / "artifacts" / job_id
    assert json.loads((d / "done.json").read_text())["attempts"] == 2
    assert _equal_weights(checkpoint.load_weights(str(d / "weights.pt")), uninterrupted)


def test_bad_gangs_are_refused_naming_resources(tmp_path, capsys):
    """Exit 2, nothing written: more CPUs than this machine for the gang; per-replica BatchNorm
    whose per-rank batch the ranks would change; a packed gang."""
    cases = [
        (("resources.ranks=2", "resources.cpus=4096"), "resources.cpus"),
        (("resources.ranks=2", "train.bn_sync=per_replica", "train.bn_batch=64"), "resources"),
        (("resources.ranks=2", "resources.pack=2"), "resources.pack"),
        (("train.bn_sync=per_replica",), "train.bn_batch"),
    ]
    for extra, field in cases:
        store = tmp_path / "s"
        assert _run(store, *extra) == 2, extra
        assert field in capsys.readouterr().err
        assert not store.exists()


def test_the_number_of_ranks_is_not_in_the_job_id():
    assert _job_ids(*SMALL) == _job_ids(*SMALL, *TWO_RANKS)
    assert _job_ids(*SMALL) != _job_ids(*SMALL, "train.bn_sync=per_replica", "train.bn_batch=64")


def test_a_gang_on_a_remote_store_stages_per_rank_and_gives_the_same_weights(uninterrupted, tmp_path):
    """A file:// store takes the copy-to-scratch path: rank 0 uploads, the other rank reads its
    own scratch copy and uploads nothing; the weights equal the local store's run bitwise."""
    store = tmp_path / "remote"
    assert main(["run", DEMO, "--store", store.as_uri(), *tiny_args(*ONE_JOB, *TWO_RANKS)]) == 0
    (job_id,) = _job_ids(*ONE_JOB)
    d = store / "artifacts" / job_id
    assert json.loads((d / "done.json").read_text())["world_size"] == 2
    assert not (d / "checkpoint.pt").exists()
    assert _equal_weights(checkpoint.load_weights(str(d / "weights.pt")), uninterrupted)


def test_status_shows_a_gang_as_one_running_job_with_its_ranks_and_nodes(tmp_path, capsys):
    import os
    import socket

    from orchestrator.store import Store

    store = Store(str(tmp_path / "store"))
    store.write_experiment("e", "name: e\n", {"g": {"parents": []}, "h": {"parents": []}})
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    store.write_json("locks/e.lock", me)
    store.write_json("experiments/e/heartbeat.json", {**me, "running": ["g"], "time": 0.0,
                                                      "gangs": {"g": {"world_size": 8, "nodes": ["node-a", "node-b"]}}})
    assert main(["status", "e", "--store", store.root]) == 0
    out = capsys.readouterr().out
    assert "e: g on 8 ranks, nodes: node-a, node-b" in out
    assert main(["status", "e", "--json", "--store", store.root]) == 0
    (st,) = json.loads(capsys.readouterr().out)
    assert st["running"] == 1 and st["gangs"] == {"g": {"world_size": 8, "nodes": ["node-a", "node-b"]}}


def _gang_listeners(found: set[tuple[int, str, int]], stop: threading.Event) -> None:
    """Every listening TCP socket of this test's rank processes (Ray actors `ray::GangRank...`
    under this process) as (pid, address, port), until `stop`."""
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        for proc in me.children(recursive=True):
            try:
                if "GangRank" not in " ".join(proc.cmdline()):
                    continue
                found.update((proc.pid, c.laddr.ip, c.laddr.port) for c in proc.net_connections("tcp")
                             if c.status == psutil.CONN_LISTEN)
            except psutil.Error:  # gone between listing and reading
                continue
        stop.wait(0.2)


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket's view
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def test_a_local_gang_listens_on_loopback_only(ray_session, tmp_path, monkeypatch):
    """While a 2-rank job runs (rank 0 slowed at each evaluation, so the gang lives for seconds),
    every socket its rank processes listen on (the store, gloo's, Ray's own) is bound to a
    loopback address: torch.distributed is unauthenticated, so a local run must not be reachable
    from the network. (Before: the store listened on `::`, the wildcard, and gloo on the
    default-route address.)"""
    (job_id,) = _job_ids(*ONE_JOB)
    monkeypatch.setenv("LTH_FAULT_INJECT", f"delay:{job_id}:1.5")
    found: set[tuple[int, str, int]] = set()
    stop = threading.Event()
    poller = threading.Thread(target=_gang_listeners, args=(found, stop), daemon=True)
    poller.start()
    try:
        assert _run(tmp_path / "store", *ONE_JOB, *TWO_RANKS) == 0
    finally:
        stop.set()
        poller.join()
    ports = Counter(pid for pid, _, _ in found)
    # both ranks seen with the gang's sockets: Ray's worker server, and gloo's (and the store on rank 0).
    # The session's Ray is shared with earlier tests, whose idle GangRank actors may be seen too
    # (their listeners are checked below all the same): at least two processes held the gang's.
    assert len([pid for pid, n in ports.items() if n >= 2]) >= 2, found
    assert all(_loopback(ip) for _, ip, _ in found), found


def _netns_prefix() -> list[str] | None:
    """A command prefix that runs in a new network namespace holding loopback alone, or None
    where this machine cannot make one (no unshare or ip, not root, namespaces disabled)."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return None
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        return None
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && [ "$(ip -o link | wc -l)" = 1 ] && exec "$@"', "netns"]


def test_a_local_gang_runs_in_a_network_namespace_with_loopback_alone(tmp_path):
    """The loopback test above, re-run where no other interface exists: a local gang (Ray, the
    store, gloo) needs nothing but 127.0.0.1 (before, the rendezvous address came from the
    default route, and gloo bound the interface the host name resolves to)."""
    prefix = _netns_prefix()
    if prefix is None:
        pytest.skip("no network namespace here (unshare -n needs root or user namespaces)")
    test = f"{Path(__file__).resolve()}::test_a_local_gang_listens_on_loopback_only"
    done = subprocess.run([*prefix, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
                          capture_output=True, text=True, timeout=600, cwd=str(Path(__file__).resolve().parents[1]))
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
