"""The Ray session of one sweep (start a private one or join a cluster) and how the driver stops.

A driver is stopped by SIGINT (Ctrl-C) or SIGTERM (what SLURM, Kubernetes and `timeout` send on
preemption, often to the whole process group). Both become `Interrupted`, a KeyboardInterrupt,
so the same `finally` blocks run: the workers are stopped, the experiment lock released, Ray's
session directory removed; the exit code is 128 + the signal (130, 143).

The embedded Ray is started with SIGTERM blocked, a mask its processes inherit: a SIGTERM sent
to the process group then reaches the driver only, which stops Ray in order, instead of killing
the raylet under a driver still waiting on it (which aborts the driver).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import threading
from typing import Any

LOOPBACK = "127.0.0.1"


class Interrupted(KeyboardInterrupt):
    """The driver was asked to stop by a signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class AddressError(ValueError):
    """`--address` names no Ray cluster this driver can reach."""


# Signals are process state: the one SIGTERM received, kept because Ray's blocking calls turn
# any exception their signal check raises into a bare KeyboardInterrupt.
_received: list[int] = []


def _on_sigterm(signum: int, frame: Any) -> None:
    # one stop is enough: a second SIGTERM (a scheduler repeating itself) must not cut the cleanup short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _received.append(signum)
    raise Interrupted(signum)


def interrupt_exit_code(exc: KeyboardInterrupt) -> tuple[str, int]:
    """(what stopped the driver, its exit code) for a KeyboardInterrupt however it arrived."""
    signum = exc.signum if isinstance(exc, Interrupted) else (_received[-1] if _received else signal.SIGINT)
    if signum == signal.SIGINT:
        return "interrupted", 128 + signum
    return f"stopped by {signal.Signals(signum).name}", 128 + signum


def stop_on_sigterm() -> None:
    """From now on SIGTERM stops the driver like Ctrl-C does."""
    _received.clear()
    _install()


def _install() -> None:
    # again after anything that installs its own handler (ray.init does)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds when nothing listens at a HOST:PORT (or ray://HOST:PORT) address, rather
    than let ray.init retry for minutes. "auto" is resolved by Ray itself."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise AddressError(f"--address: expected auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise AddressError(f"--address: no Ray cluster answers at {hostport} ({reason})") from None


class RayCluster:
    """ray.init / ray.shutdown for one sweep (or nothing, when Ray is already initialised)."""

    def __init__(self, address: str | None):
        self.address = address
        self._owned = False
        self._temp_dir: str | None = None

    def __enter__(self) -> "RayCluster":
        import ray

        if ray.is_initialized():  # a caller (a notebook, a test) owns the session
            return self
        quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": "WARNING"}
        if self.address:
            # an existing cluster: its nodes must have lth-sweep installed (deploy/), and a
            # store given as a local path must be a filesystem every node shares
            ray.init(address=self.address, **({} if self.address.startswith("ray://") else quiet))
            _install()  # ray.init replaced the handler with one that exits mid-call
        else:
            # a private session directory: never collide with another user's /tmp/ray (short:
            # Ray's socket paths must fit in 107 bytes; LTH_RAY_TMPDIR picks another parent)
            self._temp_dir = tempfile.mkdtemp(prefix="lth-ray-", dir=os.environ.get("LTH_RAY_TMPDIR", "/tmp"))
            main = threading.current_thread() is threading.main_thread()
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}) if main else None
            try:
                # the embedded cluster is this machine alone: its servers stay on loopback
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _temp_dir=self._temp_dir,
                         _node_ip_address=LOOPBACK, **quiet)
                self._owned = True
                _install()  # before the unmask: a SIGTERM that came meanwhile is ours
                if old is not None:
                    signal.pthread_sigmask(signal.SIG_SETMASK, old)  # ... and is raised here
            except BaseException:
                if old is not None:
                    signal.pthread_sigmask(signal.SIG_SETMASK, old)
                self.__exit__()  # __exit__ is not called when __enter__ raises
                raise
        self._owned = True
        return self

    def __exit__(self, *exc: Any) -> None:
        import ray

        if self._owned:
            ray.shutdown()
            self._owned = False
        if self._temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
