"""The experiment lock (orchestrator/lock.py): one holder, created whole, liveness by what the
watcher observes with its own clock, never by another host's timestamps."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from orchestrator.lock import ExperimentLock, LockError, _process_started, read_holder
from orchestrator.store import Store


@pytest.fixture(params=["path", "memory"])
def store(request, tmp_path):
    if request.param == "path":
        return Store(str(tmp_path / "store"))
    return Store(f"memory://lth-lock-{os.getpid()}-{tmp_path.name}")  # fsspec: exclusive create ("xb")


def _write_lock(store: Store, holder: dict) -> None:
    store.write_json("locks/demo.lock", holder)


def test_conflict_and_release(store):
    with ExperimentLock(store, "demo"):
        assert read_holder(store, "demo")["pid"] == os.getpid()
        with pytest.raises(LockError, match=rf"being run by pid {os.getpid()} on host"):
            ExperimentLock(store, "demo").acquire()
        with ExperimentLock(store, "other"):  # other experiments are independent
            pass
    assert read_holder(store, "demo") is None
    with ExperimentLock(store, "demo"):
        pass


def test_simultaneous_starts_leave_exactly_one_holder(store):
    """Many drivers starting at the same instant: exactly one holds the lock, every round. (The
    old lock was created empty and filled after: a driver reading it in between judged the
    holder dead and deleted a live lock, 2 starts in 100.)"""
    n, rounds = 24, 8
    for _ in range(rounds):
        barrier = threading.Barrier(n)
        won: list[ExperimentLock] = []
        errors: list[BaseException] = []

        def start() -> None:
            lock = ExperimentLock(store, "demo", stale_after=0.5)
            barrier.wait()
            try:
                lock.acquire()
                won.append(lock)
            except LockError:
                pass
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=start) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert len(won) == 1
        assert read_holder(store, "demo")["token"] == won[0].me["token"]  # the winner's, whole
        won[0].release()
        assert read_holder(store, "demo") is None


def _beat(store: Store, holder: dict, stop: threading.Event, period: float) -> None:
    while not stop.wait(period):
        holder["beat"] += 1
        _write_lock(store, holder)


def test_live_driver_on_a_host_with_a_skewed_clock_keeps_its_lock(store):
    """A driver on another host whose clock is 300 s behind, beating: alive, whatever its
    timestamps say. Once it falls silent, the lock is taken over after `stale_after` seconds of
    this host's clock."""
    holder = {"host": "elsewhere", "pid": 4242, "started": 1.0, "token": "t-else", "beat": 0,
              "time": time.time() - 300}
    _write_lock(store, holder)
    stop = threading.Event()
    beater = threading.Thread(target=_beat, args=(store, holder, stop, 0.2))
    beater.start()
    try:
        with pytest.raises(LockError, match="host elsewhere"):
            ExperimentLock(store, "demo", stale_after=2.0).acquire()
    finally:
        stop.set()
        beater.join()
    assert read_holder(store, "demo")["token"] == "t-else"  # untouched
    started = time.monotonic()
    with pytest.warns(UserWarning, match="pid 4242 on host elsewhere"):
        with ExperimentLock(store, "demo", stale_after=2.0):
            waited = time.monotonic() - started
            assert read_holder(store, "demo")["pid"] == os.getpid()
    assert 2.0 <= waited < 10.0  # judged by our own clock: the whole stale_after, not less


def test_dead_or_reused_pid_on_this_host_is_taken_over_at_once(store):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    _write_lock(store, {"host": host, "pid": int(dead.stdout), "started": 1.0, "token": "t-dead", "beat": 3})
    with pytest.warns(UserWarning, match=f"pid {int(dead.stdout)}"):
        with ExperimentLock(store, "demo", stale_after=600):  # no watching: the pid is proof
            pass
    # a running pid that started at another time than the holder: the pid was reused
    _write_lock(store, {"host": host, "pid": os.getpid(), "started": _process_started(os.getpid()) - 3600,
                        "token": "t-old", "beat": 0})
    with pytest.warns(UserWarning, match="taking over"):
        with ExperimentLock(store, "demo", stale_after=600):
            pass


def test_an_empty_lock_from_an_older_version_is_judged_by_its_silence(tmp_path):
    store = Store(str(tmp_path))
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "demo.lock").write_bytes(b"")
    with pytest.warns(UserWarning, match="taking over"):
        with ExperimentLock(store, "demo", stale_after=0.5):
            assert read_holder(store, "demo")["pid"] == os.getpid()


def test_holder_beats_and_notices_a_takeover(store):
    lock = ExperimentLock(store, "demo", beat_seconds=0.05, interrupt_on_loss=False)
    with lock:
        deadline = time.time() + 10
        while read_holder(store, "demo")["beat"] < 3 and time.time() < deadline:
            time.sleep(0.02)
        assert read_holder(store, "demo")["beat"] >= 3  # it shows life on its own
        other = {"host": "elsewhere", "pid": 1, "token": "t-other", "beat": 0}
        while lock.lost is None and time.time() < deadline:
            _write_lock(store, other)  # again if a beat in flight overwrote it
            time.sleep(0.02)
        assert lock.lost == other
    assert json.loads(store.read_bytes("locks/demo.lock"))["token"] == "t-other"  # not deleted by the loser
