"""The experiment lock: one driver per experiment, wherever the drivers run.

`locks/<name>.lock` in the store holds {host, pid, started (the process's start time on its own
host), token, beat}. The holder rewrites it every `beat_seconds` with `beat` + 1 from a thread of
its own, so a driver busy in a long call still shows life.

Is the holder gone (so its lock may be taken over)?
- On the holder's own host: its pid no longer runs, or runs a process started at another time
  (a pid reused after a restart).
- From another host: its lock has not changed for `stale_after` seconds, as this process watches
  it by its own monotonic clock. Timestamps written by another host are never compared with
  this host's clock (a clock 300 s behind would make a live driver look dead).

The lock is created whole or not at all: on a POSIX store a complete temporary file is linked
to the lock's name (link fails when the name exists); on an fsspec filesystem that can create
exclusively (mode "xb": memory, local, s3fs with If-None-Match) that is used. pyarrow's native
S3/GCS filesystems have no conditional write: there it is check-then-put, and the one narrow
race left (two drivers starting within one round trip) is caught by the beat: a holder that
finds another token in its lock stops its sweep (`lost`), so two drivers never run on for long.
"""
from __future__ import annotations

import _thread
import json
import os
import socket
import threading
import time
import uuid
import warnings
from typing import Any, Callable

from orchestrator.store import Store

BEAT_SECONDS = 5.0
# a holder on another host silent this long (by the watcher's clock) is gone: 12 missed beats,
# room for a stalled NFS write, short enough that a requeued job resumes within a minute
STALE_AFTER_SECONDS = 60.0


class LockError(RuntimeError):
    """Another live driver holds the experiment's lock."""


def lock_rel(name: str) -> str:
    return f"locks/{name}.lock"


def read_holder(store: Store, name: str) -> dict | None:
    """The lock's content: None when there is no lock, {} when it is unreadable (a lock left
    empty by an older version: its silence then judges it like any other)."""
    try:
        holder = store.read_json(lock_rel(name))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {} if store.exists(lock_rel(name)) else None
    return holder if isinstance(holder, dict) else {}


def _process_started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, ValueError):
        return None


class ExperimentLock:
    """`with ExperimentLock(store, name):` holds the lock for the block (LockError if another
    live driver holds it). `lost` is set when another driver took it over meanwhile; the main
    thread then gets a KeyboardInterrupt so the sweep stops."""

    def __init__(
        self,
        store: Store,
        name: str,
        *,
        beat_seconds: float = BEAT_SECONDS,
        stale_after: float = STALE_AFTER_SECONDS,
        process_started: Callable[[int], float | None] = _process_started,
        on_wait: Callable[[str], None] | None = None,
        interrupt_on_loss: bool = True,
    ):
        self.store, self.name, self.rel = store, name, lock_rel(name)
        self.beat_seconds, self.stale_after = beat_seconds, stale_after
        self._process_started = process_started
        self._on_wait = on_wait or (lambda msg: None)
        self._interrupt_on_loss = interrupt_on_loss
        self.me: dict[str, Any] = {}
        self.lost: dict | None = None  # the holder that replaced us, if one did
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- holding -----------------------------------------------------------------------------

    def __enter__(self) -> "ExperimentLock":
        self.acquire()
        self._thread = threading.Thread(target=self._beat_loop, name=f"lock-{self.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.release()
        except OSError as e:  # a read-only store: the lock stays, and its pid is gone when we are
            warnings.warn(f"experiment {self.name!r}: could not remove {self.store.path(self.rel)}: {e}", stacklevel=2)

    def acquire(self) -> None:
        pid = os.getpid()
        self.me = {"host": socket.gethostname(), "pid": pid, "started": self._process_started(pid),
                   "token": uuid.uuid4().hex, "beat": 0, "time": time.time()}
        for _ in range(5):  # each round ends in success, an error, or a lock that vanished meanwhile
            if self._create():
                return
            holder = read_holder(self.store, self.name)
            if holder is None:
                continue  # released (or taken over) between our try and our read
            if not self._holder_is_gone(holder):
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("time", 0)))
                raise LockError(
                    f"experiment {self.name!r} is being run by pid {holder.get('pid')} on host "
                    f"{holder.get('host')} since {since}; if that driver is dead, delete "
                    f"{self.store.path(self.rel)} and run again"
                )
            warnings.warn(
                f"experiment {self.name!r}: taking over the lock of driver pid {holder.get('pid')} on host "
                f"{holder.get('host')} (not running any more)",
                stacklevel=3,
            )
            self._remove_if(holder.get("token"))
        raise LockError(f"experiment {self.name!r}: other drivers keep taking the lock; try again")

    def release(self) -> None:
        if self.lost is None:
            self._remove_if(self.me.get("token"))

    # ---- liveness ------------------------------------------------------------------------------

    def _holder_is_gone(self, holder: dict) -> bool:
        if holder.get("host") == self.me["host"]:
            started = self._process_started(int(holder.get("pid", -1)))
            if started is None:
                return True  # no such process here
            recorded = holder.get("started")
            # the same host's clock on both sides; 1 s covers psutil's rounding of start times
            return recorded is not None and abs(started - float(recorded)) > 1.0
        return self._silent_for(holder, self.stale_after)

    def _silent_for(self, holder: dict, seconds: float) -> bool:
        """Watch the lock for `seconds` (this host's monotonic clock): True when it did not
        change (or vanished), False at the first sign of life."""
        seen = (holder.get("token"), holder.get("beat"))
        self._on_wait(
            f"experiment {self.name!r} is locked by pid {holder.get('pid')} on host {holder.get('host')}: "
            f"watching its lock for up to {seconds:.0f}s for a sign of life"
        )
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.05, self.beat_seconds / 4)))
            now = read_holder(self.store, self.name)
            if now is None:
                return True
            if (now.get("token"), now.get("beat")) != seen:
                return False
        return True

    # ---- the beat --------------------------------------------------------------------------------

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.beat_seconds):
            try:
                holder = read_holder(self.store, self.name)
                if holder is not None and holder.get("token") != self.me["token"]:
                    self.lost = holder
                    if self._interrupt_on_loss:
                        _thread.interrupt_main()
                    return
                self.me["beat"] += 1
                self.store.write_json(self.rel, self.me)
            except OSError:
                continue  # a store hiccup: the next beat tries again; stale_after allows many misses

    # ---- store operations --------------------------------------------------------------------------

    def _create(self) -> bool:
        """Create the lock with our content, whole, only if there is none."""
        data = json.dumps(self.me, sort_keys=True).encode()
        store = self.store
        if store.fs.type_name == "local":
            path = store.path(self.rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{os.path.dirname(path)}/.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # atomic, and fails if the name exists: never an empty lock
                return True
            except FileExistsError:
                return False
            finally:
                os.remove(tmp)
        fsspec_fs = getattr(getattr(store.fs, "handler", None), "fs", None)
        if fsspec_fs is not None:
            try:
                with fsspec_fs.open(store.path(self.rel), "xb") as f:
                    f.write(data)
                return True
            except FileExistsError:
                return False
            except (NotImplementedError, ValueError):
                pass  # no exclusive create on this filesystem
        if store.exists(self.rel):
            return False
        store.makedirs("locks")
        store.write_bytes(self.rel, data)
        return True

    def _remove_if(self, token: str | None) -> None:
        """Delete the lock if it still holds `token` (not a lock someone else made meanwhile)."""
        holder = read_holder(self.store, self.name)
        if holder is None or holder.get("token") != token:
            return
        if self.store.fs.type_name == "local":
            # move it aside first: a rename is atomic, so we delete exactly what we checked
            path = self.store.path(self.rel)
            aside = f"{os.path.dirname(path)}/.stale-{uuid.uuid4().hex}"
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                return
            with open(aside, "rb") as f:
                moved = json.loads(f.read() or b"{}")
            if moved.get("token") != token:  # another driver's fresh lock: put it back
                try:
                    os.link(aside, path)
                except FileExistsError:
                    pass
            os.remove(aside)
            return
        try:
            self.store.fs.delete_file(self.store.path(self.rel))
        except FileNotFoundError:
            pass
