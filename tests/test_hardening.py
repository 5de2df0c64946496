"""Issue 18, items 3 and 5: a W&B service that accepts connections and never answers (probe and
circuit breaker), CIFAR batch files that are not what they claim (no code runs while `lth plan`
reads them), and the embedded Ray's session directories (private; a killed driver's removed)."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import DEMO, REPO, lth_env, run_lth, tiny_args
from orchestrator import wandb_breaker
from orchestrator.planner import plan
from orchestrator.raysession import SESSION_PREFIX, remove_stale_sessions
from orchestrator.spec import load_spec
from orchestrator.tracking import JobTracker, TrackingSettings, decide_mode


@pytest.fixture
def silent_listener():
    """127.0.0.1:PORT: the kernel accepts connections (backlog), nobody ever reads or answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock.getsockname()[1]
    sock.close()


# ---- W&B -----------------------------------------------------------------------------------


def test_the_probe_sees_a_service_that_accepts_and_never_answers(monkeypatch, silent_listener):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{silent_listener}")
    started = time.monotonic()
    mode, warning = decide_mode("online")
    assert time.monotonic() - started < 10  # the probe's deadline (3 s), not W&B's 90 s per job
    assert mode == "offline" and f"127.0.0.1:{silent_listener}: no answer within 3 s" in warning, warning


def test_the_breaker_sends_the_rest_of_the_sweep_offline_after_one_failed_init(monkeypatch, tmp_path, silent_listener):
    """Past the probe (a service that answered it, then went silent): the first job's online init
    times out, opens the sweep's breaker, says so and logs offline; the next job logs offline at
    once, without a word. Real wandb against the silent listener."""
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{silent_listener}")
    monkeypatch.setenv("WANDB_SILENT", "true")
    breaker = wandb_breaker.breaker_path(str(tmp_path), "sweep1")
    settings = TrackingSettings(mode="online", project="p", dir=str(tmp_path), init_timeout=3.0, breaker=breaker)
    first, second = list(plan(load_spec(DEMO, [a for a in tiny_args() if a != "--set"])).jobs.values())[:2]
    t1 = JobTracker(settings, first, 1)
    started = time.monotonic()
    with pytest.warns(UserWarning, match="every later one of the sweep log offline"):
        t1.start()
    first_took = time.monotonic() - started
    assert t1.run is not None and t1.run.settings.mode == "offline"  # this job's metrics are kept too
    assert len(t1.problems) == 1 and "W&B online failed" in t1.problems[0]
    assert "logs offline" in Path(breaker).read_text()
    t1.finish()
    t2 = JobTracker(settings, second, 1)
    started = time.monotonic()
    t2.start()
    second_took = time.monotonic() - started
    assert t2.run is not None and t2.run.settings.mode == "offline" and t2.problems == []
    t2.finish()
    # the second job does not wait for the silent service at all (the first waited init_timeout)
    assert first_took >= 3.0 and second_took < first_took, (first_took, second_took)


def test_lth_run_with_a_silent_wandb_service_logs_offline_with_one_warning(tmp_path, silent_listener):
    """The issue's case end to end: every job took 90 s and the note was printed per job."""
    store = tmp_path / "store"
    ray_tmp = tempfile.mkdtemp(prefix="lthw-", dir="/tmp")  # short: Ray's socket paths fit 107 bytes
    env = lth_env(WANDB_API_KEY="x" * 40, WANDB_BASE_URL=f"http://127.0.0.1:{silent_listener}", LTH_RAY_TMPDIR=ray_tmp)
    small = tiny_args("pruning.levels=1", "pruning.at_init=null", "sweep.rewind_iters=[0]", "sweep.branch.seeds=[]", "sweep.branch.levels=[0]",
                      "tracking.wandb=online")
    started = time.monotonic()
    try:
        proc = run_lth("run", DEMO, "--store", str(store), *small, env=env, timeout=240)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("W&B is online but its service does not answer") == 1, proc.stderr[-3000:]
    assert "no answer within 3 s" in proc.stderr
    assert "W&B online failed" not in proc.stderr + proc.stdout  # no job tried online
    runs = [r for r in (store / "wandb").glob("offline-run-*") if "-experiment-" not in r.name]
    assert len(runs) == 2, runs  # the dense run and one level, both logged offline
    # ... and the experiment's own run (orchestrator/wandb_group.py) went offline too
    assert len(list((store / "wandb").glob("offline-run-*-experiment-demo-*"))) == 1
    assert took < 180, took  # 2 jobs x 90 s on main, before anything else


def test_the_experiment_run_follows_the_breaker(monkeypatch, tmp_path, silent_listener):
    """Issue 27: the experiment's own run (wandb_group.py) at the end of `lth run` went online
    with W&B's 90 s timeout even after the sweep's breaker had opened, and was lost. Now: once the
    breaker is open it starts offline at once; with the breaker still closed and the service
    silent, it waits the init timeout, opens the breaker, says so once and logs offline."""
    from orchestrator.store import Store
    from orchestrator.wandb_group import log_experiment_run

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{silent_listener}")
    monkeypatch.setenv("WANDB_SILENT", "true")
    p = plan(load_spec(DEMO, [a for a in tiny_args() if a != "--set"]))
    for case, tripped in (("tripped", True), ("silent", False)):
        run_dir = tmp_path / case
        breaker = wandb_breaker.breaker_path(str(run_dir), "sweep1")
        if tripped:
            wandb_breaker.trip(breaker, "a job's init timed out")
        settings = TrackingSettings(mode="online", project="p", dir=str(run_dir), init_timeout=2.0, breaker=breaker)
        said: list[str] = []
        started = time.monotonic()
        directory = log_experiment_run(settings, Store(str(tmp_path / f"store-{case}")), p, "h", set(), say=said.append)
        took = time.monotonic() - started
        assert directory is not None and "offline-run-" in directory, directory
        assert Path(breaker).exists()
        if tripped:  # no wait for the silent service, nothing more to say
            assert said == [] and took < 2.0, (said, took)
        else:  # one init timeout (2 s), not W&B's 90 s, then offline with one line
            assert 2.0 <= took < 30, took
            assert len(said) == 1 and "the experiment run logs offline" in said[0], said
            assert "logs offline" in Path(breaker).read_text()


# ---- CIFAR batch files ---------------------------------------------------------------------


class _Payload:
    """A pickle that, loaded by pickle.load, creates a file: any code could run there instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_planning_a_cifar_folder_never_runs_code_from_its_files(tmp_path, capsys):
    from orchestrator.cli import main
    from trainers.data.export import write_cifar_dir

    folder = write_cifar_dir(tmp_path / "data", num_classes=10, num_train=20, num_test=10, seed=0)
    marker = tmp_path / "pwned"
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": _Payload(marker), "labels": [0]}, protocol=2))
    assert not marker.exists()
    store = tmp_path / "store"
    assert main(["plan", DEMO, "--store", str(store), *tiny_args("data.name=cifar10", f"data.root={tmp_path / 'data'}",
                                                                 "model=cifar_resnet_20")]) == 2
    err = capsys.readouterr().err
    assert not marker.exists(), "unpickling data.root's files ran code"
    assert "data_batch_3: unreadable CIFAR batch file" in err and "names io.open" in err and "not imported" in err, err
    assert not store.exists()


def test_the_restricted_reader_reads_real_batch_files_as_before(tmp_path):
    """The official files' form (Python 2 pickles: numpy.core names, latin1) and export.py's."""
    import numpy as np

    from trainers.data.catalog import CIFAR10
    from trainers.data.cifar_files import read_batch
    from trainers.data.export import write_cifar_dir

    folder = write_cifar_dir(tmp_path, num_classes=10, num_train=20, num_test=10, seed=0)
    with open(folder / "test_batch", "rb") as f:
        expected = pickle.load(f, encoding="latin1")  # the unrestricted reader, on our own file
    x, y = read_batch(folder / "test_batch", CIFAR10)
    assert np.array_equal(x.reshape(len(x), -1), expected["data"]) and y.tolist() == expected["labels"]
    # a protocol-2 pickle naming numpy.core.multiarray._reconstruct, as the official files do
    legacy = pickle.dumps({"data": expected["data"], "labels": expected["labels"]}, protocol=2)
    legacy = legacy.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (tmp_path / "legacy").write_bytes(legacy)
    x2, y2 = read_batch(tmp_path / "legacy", CIFAR10)
    assert np.array_equal(x2, x) and np.array_equal(y2, y)


# ---- the embedded Ray's session directories -------------------------------------------------


def _owned_by(parent: Path, name: str, pid: int, started: float | None) -> Path:
    d = parent / f"{SESSION_PREFIX}{name}"
    d.mkdir()
    (d / "lth-owner.json").write_text(json.dumps({"pid": pid, "started": started, "host": socket.gethostname()}))
    return d


def test_only_dead_drivers_sessions_are_removed(tmp_path):
    import psutil

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_started = psutil.Process(gone.pid).create_time()
    gone.wait()
    me = psutil.Process()
    dead = _owned_by(tmp_path, "dead", gone.pid, gone_started)
    reused = _owned_by(tmp_path, "reused", os.getpid(), me.create_time() - 1000)  # this pid, another process
    live = _owned_by(tmp_path, "live", os.getpid(), me.create_time())
    unmarked = tmp_path / f"{SESSION_PREFIX}unmarked"  # being made, or another version's
    unmarked.mkdir()
    held = _owned_by(tmp_path, "held", gone.pid, gone_started)  # its driver is gone, a server of it is not
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--log_dir={held}/logs"])
    # a Ray worker of a gone driver, still exiting: its title names nothing, its TMPDIR does (removed
    # under it, it left empty session folders behind: issue 27)
    working = _owned_by(tmp_path, "working", gone.pid, gone_started)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              env={**os.environ, "TMPDIR": str(working / "tmp")})
    try:
        removed = remove_stale_sessions(str(tmp_path))
    finally:
        for proc in (holder, worker):
            proc.kill()
            proc.wait()
    assert sorted(removed) == sorted([str(dead), str(reused)])
    assert not dead.exists() and not reused.exists() and live.exists() and unmarked.exists() and held.exists()
    assert working.exists()


_HOLD = """
import glob, os, sys, time
import ray
from orchestrator.raysession import RayCluster
with RayCluster(None) as cluster:
    @ray.remote
    class Probe:
        def pid(self):
            return os.getpid()

    ray.get(Probe.remote().pid.remote())  # a worker started: Ray made its directories 0777 again then
    found = sorted(p for sub in ("sockets", "logs")
                   for p in glob.glob(os.path.join(cluster._temp_dir, "**", "session_[0-9]*", sub), recursive=True))
    print(cluster._temp_dir, *found, flush=True)
    time.sleep(300)
"""


def _reachable_by_others(parent: Path, path: Path) -> bool:
    """Whether another user can reach `path` below `parent`: every directory from parent's child
    down to path lets group or others through (x), or is not this user's."""
    here = parent
    for part in path.relative_to(parent).parts:
        here = here / part
        st = os.stat(here)
        if st.st_uid == os.getuid() and not st.st_mode & 0o011:
            return False
    return True


def test_a_killed_drivers_session_is_private_and_removed_once_its_servers_are_gone():
    """Private for the whole run (issue 27: Ray reset the session directory and its sockets and
    logs to 0777 each time a worker started, so a chmod at start did not hold): checked after
    a worker has started."""
    parent = Path(tempfile.mkdtemp(prefix="lths-", dir="/tmp"))  # short: Ray's socket paths fit 107 bytes
    env = lth_env(LTH_RAY_TMPDIR=str(parent))
    try:
        first = subprocess.Popen([sys.executable, "-c", _HOLD], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        line = first.stdout.readline().split()
        assert line, "the first driver did not start Ray"
        first_dir, *inside = line
        assert len(inside) == 2, line  # the session's sockets and logs
        assert os.stat(first_dir).st_mode & 0o777 == 0o700
        exposed = [p for p in [first_dir, *inside] if _reachable_by_others(parent, Path(p))]
        assert exposed == [], exposed
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert Path(first_dir).is_dir()  # what a SIGKILL leaves
        deadline = time.monotonic() + 60  # Ray's servers notice their driver is gone and exit
        while time.monotonic() < deadline and remove_stale_sessions(str(parent)) == [] and Path(first_dir).exists():
            time.sleep(1)
        assert not Path(first_dir).exists()
    finally:
        shutil.rmtree(parent, ignore_errors=True)


# ---- what a fault's message says (issue 27, cosmetics) ---------------------------------------


def test_fault_messages_say_what_happened_and_nothing_else(capsys):
    import errno

    from orchestrator.cli import main
    from orchestrator.failures import one_line
    from orchestrator.scheduler import RunSummary
    from orchestrator.worker import storage_reason

    # a 300-character name is 300 characters (repr's quotes made it 302)
    assert main(["plan", DEMO, "--set", "name=" + "a" * 300]) == 2
    err = capsys.readouterr().err
    assert "(300 characters)" in err, err
    # a full disk met by a flush or close names no file: no ": None"
    assert storage_reason(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device"
    assert storage_reason(OSError(errno.ENOSPC, "No space left on device", "/s/x")) == "No space left on device: /s/x"
    # Ray's worker-died error carries terminal colour codes: the line a person reads has none
    ray_error = "ray.exceptions.ActorDiedError: The actor died unexpectedly: \x1b[36mray::JobRunner\x1b[39m (pid=4)"
    assert one_line(ray_error) == "ray.exceptions.ActorDiedError: The actor died unexpectedly: ray::JobRunner (pid=4)"
    # a producer redone (its output damaged) ran, and is not also counted as already done
    summary = RunSummary(planned=4, already_done=2, ran=["b", "c", "d"], done_before={"a", "b"})
    assert len(set(summary.ran)) + summary.reused == summary.planned
