"""Faults: a job that raises, a worker killed mid-job, a driver killed mid-sweep.

Each disturbed sweep must end with results equal to an undisturbed one (weights bitwise, rows
equal but for wall time, host, node and attempts), and nothing finished may be redone.
Jobs are slowed or broken with the LTH_FAULT_INJECT test hook (orchestrator/worker.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import DEMO, REPO, lth_env, tiny_args, tree_digest
from orchestrator.cli import main
from orchestrator.planner import plan
from orchestrator.spec import load_spec
from orchestrator.store import Store

VOLATILE = ["wall_seconds", "host", "node", "attempts"]


def _plan():
    return plan(load_spec(DEMO, [a for a in tiny_args() if a != "--set"]))


def _done(store: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (store / "artifacts").glob("*/done.json")}


def _rows(store: Path, table: str, key: list[str]):
    t = Store(str(store)).read_table(table, "demo")
    return t.drop_columns([c for c in VOLATILE if c in t.schema.names]).sort_by([(k, "ascending") for k in key])


def _assert_same_results(store: Path, reference: Path) -> None:
    p = _plan()
    trains = [j for j in p.jobs if p.jobs[j].kind == "train"]
    assert tree_digest(store, trains) == tree_digest(reference, trains)
    for table, key in [("runs", ["job_id"]), ("metrics", ["job_id", "iteration", "split"]),
                       ("interpolation", ["pair_id", "split", "alpha"]), ("instability", ["pair_id", "split"])]:
        assert _rows(store, table, key).equals(_rows(reference, table, key)), table


@pytest.fixture(scope="module")
def reference(ray_session, tmp_path_factory):
    store = tmp_path_factory.mktemp("ref") / "store"
    assert main(["run", DEMO, "--store", str(store), *tiny_args("tracking.wandb=disabled")]) == 0
    return store


def test_failing_job_is_retried_then_failed_and_the_rest_finishes(reference, tmp_path, monkeypatch, capsys):
    p = _plan()
    by = {(j.meta.role, j.meta.rewind_iter, j.meta.level, j.meta.data_seed): j.id for j in p.jobs.values() if j.kind == "train"}
    broken = by[("level", 10, 1, 0)]  # always raises: its subtree is blocked
    flaky = by[("level", 0, 1, 0)]  # raises on its first attempt only
    monkeypatch.setenv("LTH_FAULT_INJECT", f"raise:{broken},raise:{flaky}:1")
    store = tmp_path / "store"
    assert main(["run", DEMO, "--store", str(store), *tiny_args("tracking.wandb=disabled")]) == 1
    err = capsys.readouterr().err
    assert f"failed: {broken}" in err

    failed = json.loads((store / "artifacts" / broken / "failed.json").read_text())
    assert failed["attempts"] == 2  # scheduler.max_attempts
    assert "injected failure" in failed["traceback"] and "RuntimeError" in failed["traceback"]
    capsys.readouterr()
    assert main(["logs", broken[:8], "--store", str(store)]) == 0  # each attempt's log, kept
    assert capsys.readouterr().out.count("RuntimeError: LTH_FAULT_INJECT: injected failure") == 2

    blocked = set()
    frontier = {broken}
    while frontier:  # every descendant of the broken job
        frontier = {j.id for j in p.jobs.values() if set(j.parents) & frontier} - blocked
        blocked |= frontier
    assert blocked  # level 2 of k=10, its branches and their pair
    done = set(_done(store))
    assert done == set(p.jobs) - blocked - {broken}
    runs = {r["job_id"]: r for r in Store(str(store)).read_table("runs", "demo").to_pylist()}
    assert runs[flaky]["attempts"] == 2 and all(r["attempts"] == 1 for j, r in runs.items() if j != flaky)
    # what did finish equals the undisturbed sweep
    trains = [j for j in done if p.jobs[j].kind == "train"]
    assert tree_digest(store, trains) == tree_digest(reference, trains)

    # the broken job fixed (the hook removed): a rerun runs exactly the failed subtree
    monkeypatch.delenv("LTH_FAULT_INJECT")
    before = _done(store)
    assert main(["run", DEMO, "--store", str(store), *tiny_args("tracking.wandb=disabled")]) == 0
    after = _done(store)
    assert set(after) == set(p.jobs) and {j: after[j] for j in before} == before
    assert not (store / "artifacts" / broken / "failed.json").exists()
    _assert_same_results(store, reference)


def _kill_running_actor_after_checkpoint(checkpoint: Path, killed: list, stop: threading.Event) -> None:
    """Watch for the job's first checkpoint, then SIGKILL the Ray worker executing a job
    (`ray::JobRunner.run`) among this test process's descendants."""
    me = psutil.Process()
    while not stop.is_set() and not killed:
        if checkpoint.exists():
            for proc in me.children(recursive=True):
                try:
                    if proc.cmdline()[:1] == ["ray::JobRunner.run"]:
                        proc.send_signal(signal.SIGKILL)
                        killed.append(proc.pid)
                except psutil.Error:
                    continue
        time.sleep(0.05)


def test_worker_killed_mid_job_resumes_from_its_checkpoint(reference, tmp_path, monkeypatch):
    p = _plan()
    dense = next(j.id for j in p.jobs.values() if j.kind == "train" and not j.parents)
    # the dense run is the only job that can run at first; slow it so it is killed mid-way
    monkeypatch.setenv("LTH_FAULT_INJECT", f"delay:{dense}:0.5")
    store = tmp_path / "store"
    killed: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(
        target=_kill_running_actor_after_checkpoint, args=(store / "artifacts" / dense / "checkpoint.pt", killed, stop)
    )
    watcher.start()
    try:
        rc = main(["run", DEMO, "--store", str(store), *tiny_args("tracking.wandb=disabled")])
    finally:
        stop.set()
        watcher.join()
    assert killed, "the worker was never killed"
    assert rc == 0
    record = json.loads((store / "artifacts" / dense / "done.json").read_text())
    assert record["attempts"] == 2
    assert record["result"]["resumed_from"] > 0  # continued from its checkpoint, not from scratch
    assert record["pid"] not in killed
    runs = {r["job_id"]: r for r in Store(str(store)).read_table("runs", "demo").to_pylist()}
    assert runs[dense]["attempts"] == 2
    _assert_same_results(store, reference)


def _interrupt_sweep(store: Path, sig: int, after_done: int, ray_tmp: str, group: bool = False) -> subprocess.Popen:
    """Start `lth run` with every job slowed, send `sig` once `after_done` jobs are done (to the
    driver's whole process group with `group`, as SLURM and `timeout` do). The process gets
    `leftover`: the pids still in its group once it exited, and `stop_seconds`."""
    env = lth_env(LTH_FAULT_INJECT="delay::0.3", LTH_RAY_TMPDIR=ray_tmp)  # every job slow on its first attempt
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "run", DEMO, "--store", str(store),
         *tiny_args("tracking.wandb=disabled")],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # A person's Ctrl-C reaches a driver whose SIGINT is at its default. A test suite started
        # in the background by a script inherits SIGINT ignored (POSIX, for asynchronous commands),
        # and Python then keeps ignoring it: give the driver the terminal's disposition.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 180
        while len(_done(store)) < after_done and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        sent = time.time()
        (os.killpg if group else os.kill)(proc.pid, sig)
        proc.wait(timeout=60)
        proc.stop_seconds = time.time() - sent  # type: ignore[attr-defined]
        proc.leftover = _group_members(proc.pid, wait=10.0)  # type: ignore[attr-defined]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        # what is left of its local Ray (a killed driver cannot stop it) goes with its group
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc


def _group_members(pgid: int, wait: float) -> list[str]:
    """The processes left in a process group, after waiting up to `wait` seconds for them to go."""
    deadline = time.time() + wait
    while True:
        left = []
        for proc in psutil.process_iter(["pid", "name"]):
            try:
                if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{proc.pid} {proc.info['name']}")
            except (ProcessLookupError, psutil.Error):
                continue
        if not left or time.time() > deadline:
            return left
        time.sleep(0.2)


@pytest.fixture
def ray_tmp():
    """A short parent for the subprocess drivers' Ray session directories (a killed driver
    cannot remove its own)."""
    path = tempfile.mkdtemp(prefix="lthk-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_driver_killed_mid_sweep_loses_nothing(reference, tmp_path, ray_tmp):
    store = tmp_path / "store"
    # Ctrl-C: a clean stop, exit 130, the lock released
    proc = _interrupt_sweep(store, signal.SIGINT, after_done=2, ray_tmp=ray_tmp)
    assert proc.returncode == 130, proc.stderr.read()
    assert "interrupted" in proc.stderr.read()
    assert not (store / "locks" / "demo.lock").exists()
    # kill -9: nothing can be cleaned up
    proc = _interrupt_sweep(store, signal.SIGKILL, after_done=len(_done(store)) + 2, ray_tmp=ray_tmp)
    before = _done(store)
    assert 4 <= len(before) < len(_plan().jobs)
    lock = json.loads((store / "locks" / "demo.lock").read_text())
    assert lock["pid"] == proc.pid  # the dead driver's lock is still there

    with pytest.warns(UserWarning, match=f"pid {proc.pid}"):  # stale lock taken over
        assert main(["run", DEMO, "--store", str(store), *tiny_args("tracking.wandb=disabled")]) == 0
    after = _done(store)
    assert set(after) == set(_plan().jobs)
    assert {j: after[j] for j in before} == before  # no finished job ran again
    assert not (store / "locks" / "demo.lock").exists()
    _assert_same_results(store, reference)


def test_sigterm_to_the_process_group_stops_cleanly(tmp_path, ray_tmp):
    """What SLURM, Kubernetes and `timeout` do on preemption: SIGTERM to every process of the
    driver's group (Ray's included). The driver stops as on Ctrl-C: exit 143, the lock released,
    its Ray stopped and Ray's session directory removed; a rerun resumes."""
    store = tmp_path / "store"
    proc = _interrupt_sweep(store, signal.SIGTERM, after_done=1, ray_tmp=ray_tmp, group=True)
    err = proc.stderr.read()
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM: rerun `lth run " in err and "--store" in err  # the full command
    assert "Traceback" not in err
    assert not (store / "locks" / "demo.lock").exists()
    assert proc.leftover == [], proc.leftover  # no Ray process outlives the driver
    assert os.listdir(ray_tmp) == []  # Ray's session directory is gone
    print(f"SIGTERM to the group: driver exited in {proc.stop_seconds:.1f}s")


def test_corrupt_inputs_are_redone_not_trained_on(reference, tmp_path, capsys):
    """A finished sweep damaged three ways, then run again (as another experiment, whose rows
    are written from the done records): a parent's weights truncated under a child that must
    run again, a job's own checkpoint.pt truncated, an interpolation's done.json truncated.
    The damaged parent is redone (its checksum gave it away), the job with the bad checkpoint
    starts over, the unreadable record's job runs again; the results equal the undisturbed
    sweep's, bit for bit, and every damaged file is kept aside."""
    p = _plan()
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    art = store / "artifacts"
    dense = next(j for j in p.jobs.values() if j.kind == "train" and not j.parents)
    child = next(j for j in p.jobs.values() if j.kind == "train" and j.parents == (dense.id,))
    src, name = next(v for v in child.inputs.values() if v[0] == dense.id)
    restart = next(j for j in p.jobs.values() if j.kind == "train" and j.meta.level == 2)
    pair = next(j for j in p.jobs.values() if j.kind == "interpolate")
    for job in (child, restart):  # not done any more: they must run again
        for f in ("done.json", "result.json", "weights.pt"):
            (art / job.id / f).unlink()
    good = (art / dense.id / name).read_bytes()
    (art / dense.id / name).write_bytes(good[: len(good) // 2])
    (art / restart.id / "checkpoint.pt").write_bytes(good[:100])  # a torch zip cut short
    record = (art / pair.id / "done.json").read_bytes()
    (art / pair.id / "done.json").write_bytes(record[: len(record) // 2])

    capsys.readouterr()
    assert main(["run", DEMO, "--store", str(store), *tiny_args("tracking.wandb=disabled", "name=demo_copy")]) == 0
    out = capsys.readouterr().out
    assert f"corrupt artifacts/{dense.id}/{name} (checksum mismatch" in out and f"redoing {dense.id}" in out
    assert f"corrupt artifacts/{pair.id}/done.json" in out
    assert f"note   {restart.id}: checkpoint.pt was unreadable" in out
    # the redone parent was done before and ran again: counted once (issue 27: 63 of 62)
    ran, reused = map(int, re.search(r"ran (\d+) jobs, (\d+) were already done", out).groups())
    assert ran + reused == len(p.jobs), (ran, reused)
    for job_id, kept in ((dense.id, name), (restart.id, "checkpoint.pt"), (pair.id, "done.json")):
        assert list((art / job_id).glob(f"{kept}.corrupt-*")), (job_id, kept)
    assert (art / dense.id / name).read_bytes() == good  # rebuilt, bitwise
    records = {j: json.loads((art / j / "done.json").read_text()) for j in p.jobs}
    assert records[restart.id]["result"]["resumed_from"] is None  # started over
    assert all(r["checksums"] for j, r in records.items() if p.jobs[j].kind == "train")
    trains = [j for j in p.jobs if p.jobs[j].kind == "train"]
    assert tree_digest(store, trains) == tree_digest(reference, trains)
    ref = Store(str(reference))
    mine = Store(str(store))
    for table, key in (("runs", ["job_id"]), ("instability", ["pair_id", "split"])):
        def rows(s: Store, experiment: str):
            t = s.read_table(table, experiment)
            t = t.drop_columns([c for c in ["experiment", *VOLATILE] if c in t.schema.names])
            return t.sort_by([(k, "ascending") for k in key])

        assert rows(mine, "demo_copy").equals(rows(ref, "demo")), table


def test_a_damaged_part_is_rebuilt_and_an_unreadable_leaf_record_runs_again(reference, tmp_path, capsys):
    """Issue 27: a damaged part file's rows were lost for good (no other file holds them), and a
    leaf job's unreadable done.json (no pending job reads it) passed for done in `lth run` and
    `lth status`. Now `lth run` sets the part aside, writes its rows again from the done records
    (equal to the undisturbed sweep's), and runs the leaf again; `lth status` counts it not done."""
    from orchestrator.progress import experiment_status

    p = _plan()
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    parts = sorted((store / "results" / "layers" / "experiment=demo").glob("part-*.parquet"))
    assert parts, "the reference has no layers part"
    damaged = parts[0]
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])  # no footer: no reader can open it
    leaf = next(j for j in p.jobs.values() if j.kind == "interpolate")
    record = (store / "artifacts" / leaf.id / "done.json").read_bytes()
    (store / "artifacts" / leaf.id / "done.json").write_bytes(record[: len(record) // 2])

    assert experiment_status(Store(str(store)), "demo").counts.done == len(p.jobs) - 1
    capsys.readouterr()
    assert main(["run", DEMO, "--store", str(store), *tiny_args("tracking.wandb=disabled")]) == 0
    out, err = capsys.readouterr()
    rel = damaged.relative_to(store).as_posix()
    assert f"corrupt {rel} (" in out and "written again from the jobs' done records" in out, out
    assert f"corrupt artifacts/{leaf.id}/done.json" in out, out
    assert "ran 1 jobs" in out + err, out + err  # the leaf, and nothing else
    assert list((store / "damaged" / "results" / "layers" / "experiment=demo").glob(f"{damaged.name}.corrupt-*"))
    assert not damaged.exists()
    for table, key in (("layers", ["job_id", "layer"]), ("instability", ["pair_id", "split"])):
        assert _rows(store, table, key).equals(_rows(reference, table, key)), table
    assert experiment_status(Store(str(store)), "demo").counts.done == len(p.jobs)


def _flip(path: Path, n: int = 16) -> None:
    """n bytes in the middle of a file inverted: a torch file still loads, with other numbers."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
    path.write_bytes(bytes(data))


def _records(store: Path, job_ids) -> dict[str, dict]:
    return {j: json.loads((store / "artifacts" / j / "done.json").read_text()) for j in job_ids}


def test_one_damaged_parent_with_many_workers_is_redone_once_while_its_consumers_wait(reference, tmp_path, capsys):
    """Issue 18.1: the dense run's mask.pt (read by all six of its children) damaged, the
    children gone, four workers. Every child reports the damage as it gets a worker; only the
    first report is a redo, the others wait for it without spending attempts (before: each report
    counted as a redo, past max_attempts, and the children failed in a second)."""
    p = _plan()
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    dense = next(j for j in p.jobs.values() if j.kind == "train" and not j.parents)
    consumers = [j.id for j in p.jobs.values() if (dense.id, "mask.pt") in j.inputs.values()]
    assert len(consumers) == 6 > 2  # more reports than scheduler.max_attempts
    for job_id in consumers:
        shutil.rmtree(store / "artifacts" / job_id)
    _flip(store / "artifacts" / dense.id / "mask.pt")

    capsys.readouterr()
    rc = main(["run", DEMO, "--store", str(store), *tiny_args("tracking.wandb=disabled", "resources.cpus=0.5")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count(f"redoing {dense.id}") == 1, out  # one redo, however many reports
    print(f"reports that waited: {out.count('waits  ')}")
    assert list((store / "artifacts" / dense.id).glob("mask.pt.corrupt-*"))
    records = _records(store, p.jobs)
    assert all(records[j]["attempts"] == 1 for j in consumers)  # waiting cost nothing
    _assert_same_results(store, reference)  # nothing trained on the damaged mask


def test_a_redone_job_reuses_only_outputs_its_worker_verified(reference, tmp_path, capsys):
    """Issue 18.2: finished jobs whose outputs are still there run again, each with damaged or
    unverifiable outputs: a level's done.json cut short and its weights.pt flipped; another
    level's done.json gone (a driver that died before recording it) and its weights.pt flipped;
    a leaf whose checksums.json is gone with its done.json (a worker that died before writing it).
    Each is trained again from its verified inputs, the next level of each lineage (gone too)
    trains on the good weights, and the published rows (the same experiment: its rows are already
    there) still describe the artifacts. Before: the worker reused result.json and weights.pt as
    they were, hashed the damaged file into a new done.json, and the next level trained on it."""
    p = _plan()
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    art = store / "artifacts"
    by = {(j.meta.role, j.meta.rewind_iter, j.meta.level, j.meta.data_seed): j.id for j in p.jobs.values() if j.kind == "train"}
    cut, lost, unsealed = by[("level", 0, 1, 0)], by[("level", 10, 1, 0)], by[("branch", 10, 0, 1)]

    for next_level in (by[("level", 0, 2, 0)], by[("level", 10, 2, 0)]):
        shutil.rmtree(art / next_level)
    record = (art / cut / "done.json").read_bytes()
    (art / cut / "done.json").write_bytes(record[: len(record) // 2])
    (art / lost / "done.json").unlink()
    (art / unsealed / "done.json").unlink()
    (art / unsealed / "checksums.json").unlink(missing_ok=True)  # (none before checksums.json)
    for job_id in (cut, lost):
        _flip(art / job_id / "weights.pt")

    capsys.readouterr()
    rc = main(["run", DEMO, "--store", str(store), *tiny_args("tracking.wandb=disabled", "resources.cpus=0.5")])
    out = capsys.readouterr().out
    assert rc == 0, out
    for job_id in (cut, lost):
        assert f"note   {job_id}: its earlier result could not be verified (weights.pt does not match" in out, out
        assert len(list((art / job_id).glob("weights.pt.corrupt-*"))) == 1
    assert f"note   {unsealed}: its earlier result could not be verified (no checksums.json" in out, out
    assert list((art / cut).glob("done.json.corrupt-*"))
    for job_id, r in _records(store, p.jobs).items():  # every record's sums are its files'
        for name, digest in r["checksums"].items():
            assert hashlib.sha256((art / job_id / name).read_bytes()).hexdigest() == digest, (job_id, name)
    _assert_same_results(store, reference)
    runs = Store(str(store)).read_table("runs", "demo")
    assert sorted(runs.column("job_id").to_pylist()) == sorted(j for j in p.jobs if p.jobs[j].kind == "train")


def test_a_redo_that_contradicts_its_published_rows_is_refused(reference, tmp_path, capsys):
    """Published rows are never rewritten: a job finished again whose results differ from them (a
    non-deterministic job redone; here the published row is edited to stand for the first run) is
    refused, not recorded: it fails saying why, its new outputs are set aside, its pair is
    blocked, and the published rows stay as they were, once each."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    p = _plan()
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    pair = next(j for j in p.jobs.values() if j.kind == "interpolate")
    leaf = pair.meta.pair[0]
    (store / "artifacts" / leaf / "done.json").unlink()  # it runs again (its outputs are reused)
    shutil.rmtree(store / "artifacts" / pair.id)
    for part in (store / "results" / "runs" / "experiment=demo").glob("part-*.parquet"):
        t = pq.read_table(part)
        mine = pc.equal(t["job_id"], leaf)
        if pc.any(mine).as_py():
            col = t.schema.get_field_index("test_accuracy")
            t = t.set_column(col, "test_accuracy", pc.if_else(mine, 0.5, t["test_accuracy"]))
            pq.write_table(t, part)

    capsys.readouterr()
    rc = main(["run", DEMO, "--store", str(store), *tiny_args("tracking.wandb=disabled")])
    captured = capsys.readouterr()
    assert rc == 1, captured.out
    assert f"failed: {leaf}" in captured.err and "differ from its published rows" in captured.err
    assert "test_accuracy" in captured.err and "--set name=" in captured.err
    art = store / "artifacts" / leaf
    assert not (art / "done.json").exists() and (art / "failed.json").exists()
    assert not (art / "weights.pt").exists() and list(art.glob("weights.pt.refused-*"))
    assert not (store / "artifacts" / pair.id / "done.json").exists()  # blocked
    runs = Store(str(store)).read_table("runs", "demo").to_pylist()
    assert [r["test_accuracy"] for r in runs if r["job_id"] == leaf] == [0.5]  # untouched, once


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of the given size (the tiny sweep's store needs about 4 MB): a real full disk.
    Needs the right to mount (root in a container that allows it); skipped elsewhere."""
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        mnt = tmp_path / name
        mnt.mkdir()
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    def remount(mnt: Path, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True)

    try:
        yield mount, remount
    finally:
        for mnt in mounted:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_or_read_only_store_stops_the_sweep_with_one_line(reference, small_disk, capsys):
    mount, remount = small_disk
    mnt = mount("disk", "size=1536k")
    store = mnt / "store"
    args = ["run", DEMO, "--store", str(store), *tiny_args("tracking.wandb=disabled")]
    capsys.readouterr()
    started = time.time()
    assert main(args) == 1
    stopped = time.time() - started
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: store {store}: No space left on device"), err
    assert "the sweep stopped at the first storage error" in err[0] and "rerun `lth run" in err[0]
    assert not list(store.glob("artifacts/*/failed.json"))  # no job was charged for the disk
    done = _done(store)
    assert len(done) < len(_plan().jobs)

    read_only = mount("ro-disk", "size=1m")  # a read-only store: the same, before any job runs
    (read_only / "store").mkdir()
    remount(read_only, "ro")
    ro_args = ["run", DEMO, "--store", str(read_only / "store"), *tiny_args("tracking.wandb=disabled")]
    assert main(ro_args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Read-only file system" in err[0], err

    remount(mnt, "rw,size=64m")  # space is back: the sweep resumes and finishes, nothing redone
    started = time.time()
    assert main(args) == 0
    resumed = time.time() - started
    after = _done(store)
    assert set(after) == set(_plan().jobs) and {j: after[j] for j in done} == done
    _assert_same_results(store, reference)
    print(f"full disk: stopped after {stopped:.1f}s with {len(done)} jobs done; resumed and finished in {resumed:.1f}s")
