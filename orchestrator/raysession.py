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

import contextlib
import glob
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
from typing import Any, Iterator

LOOPBACK = "127.0.0.1"


class Interrupted(KeyboardInterrupt):
    """The driver was asked to stop by a signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class RayStartError(RuntimeError):
    """The embedded local Ray did not start (a message for the user, one line)."""


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


def stop_on_sigterm() -> Any:
    """From now on SIGTERM stops the driver like Ctrl-C does. Returns the handler it replaced,
    for `restore_sigterm` (the CLI called as a function must leave its caller's handler)."""
    _received.clear()
    previous = signal.getsignal(signal.SIGTERM)
    _install()
    return previous


def restore_sigterm(previous: Any) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)


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
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as conn:
            reply = _http2_greeting(conn)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise AddressError(f"--address: no Ray cluster answers at {hostport} ({reason})") from None
    hint = ("give the head node's GCS port (ray start --head prints it; 6379 by default) or ray://HOST:10001 "
            "for Ray Client, not the dashboard's (8265)")
    if reply is None:
        raise AddressError(f"--address: {hostport} accepts connections but is not a Ray cluster (it does not speak gRPC); {hint}")
    service = _RAY_CLIENT_SERVICE if address.startswith("ray://") else _GCS_SERVICE
    verdict = _ray_service_answers(hostport, service, timeout)
    if verdict is not None:
        raise AddressError(f"--address: {hostport} accepts connections but is not a Ray cluster ({verdict}); {hint}")


# The HTTP/2 client preface and an empty SETTINGS frame. Ray's GCS and its Ray Client server are
# gRPC servers, which answer with a SETTINGS frame of their own; anything else (the dashboard's
# HTTP/1.1, an unrelated service) leaves ray.init retrying for minutes, so it is refused here.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_SETTINGS = 4


def _http2_greeting(conn: socket.socket) -> bytes | None:
    """The server's first HTTP/2 frame header when it is a SETTINGS frame, else None."""
    conn.sendall(_H2_PREFACE)
    header = b""
    try:
        while len(header) < 9:
            chunk = conn.recv(9 - len(header))
            if not chunk:
                return None
            header += chunk
    except (socket.timeout, ConnectionError):
        return None
    return header if header[3] == _H2_SETTINGS else None


# A gRPC server answers a method it does not serve with UNIMPLEMENTED, whatever it is. Ray's GCS
# (and its Ray Client server) answers one of its own methods otherwise: OK, or UNAUTHENTICATED
# under token authentication, which it checks after finding the method. So the peer is Ray when
# the known method is found and a made-up one of the same service is not: two empty requests,
# milliseconds, instead of ray.init retrying for minutes against a server that never will be Ray.
_GCS_SERVICE = ("/ray.rpc.NodeInfoGcsService/", "CheckAlive")
_RAY_CLIENT_SERVICE = ("/ray.rpc.RayletDriver/", "ClusterInfo")
_NO_SUCH_METHOD = "LthSweepNoSuchMethod"


def _ray_service_answers(hostport: str, service: tuple[str, str], timeout: float) -> str | None:
    """None when the gRPC peer at hostport serves Ray's `service`, else why not (in words)."""
    import grpc

    prefix, method = service

    def status(name: str) -> grpc.StatusCode:
        call = channel.unary_unary(prefix + name, request_serializer=None, response_deserializer=None)
        try:
            call(b"", timeout=timeout)  # an empty message is every request type's default value
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()

    with grpc.insecure_channel(hostport) as channel:
        known = status(method)
        if known == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"no gRPC answer within {timeout:g} s"
        if known == grpc.StatusCode.UNIMPLEMENTED:
            return f"a gRPC server without Ray's {prefix.strip('/')} service"
        if known == grpc.StatusCode.UNAVAILABLE:
            return "its gRPC server is unavailable"
        if status(_NO_SUCH_METHOD) != grpc.StatusCode.UNIMPLEMENTED:
            return f"a gRPC server that answers any method ({known.name.lower()} to {method})"
    return None


# Ray binds its servers (GCS, raylet, workers, agents) to every interface unless it believes it
# runs without a cluster, which it reads from this variable when `ray` is first imported.
_RAY_NO_CLUSTER = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _keep_ray_on_loopback() -> None:
    """Make the embedded Ray (this process, and through the environment every process it
    starts) listen on 127.0.0.1 only."""
    import sys

    os.environ[_RAY_NO_CLUSTER] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # ray was imported already: it read the variable then
        constants.ENABLE_RAY_CLUSTER = False


# Ray (>= 2.52) turns token authentication on for every cluster ray.init starts when RAY_AUTH_MODE
# is unset, and warns that it did, on every run. The embedded Ray keeps it on: listening on
# loopback only keeps the network out, not the other users of a shared machine (a login node, a
# lab's GPU box), who can reach 127.0.0.1 and, without a token, run code as this user. The token
# is Ray's own (~/.ray/auth_token, made on first use with the umask's mode: on a shared machine,
# chmod 600 it). So the warning is silenced, not the authentication; a RAY_AUTH_MODE the user set
# is obeyed, as Ray does, and a joined cluster (--address) is left wholly to Ray and its operator.
_TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
_TOKEN_AUTH_ON_BY_DEFAULT = "Token authentication is enabled for this Ray cluster"


class _DropTokenAuthNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_TOKEN_AUTH_ON_BY_DEFAULT)


# The embedded Ray's session directories: PARENT/lth-ray-XXXX, private (0700) and marked with
# the driver that made it; Ray's own temporary directory is RAY_DIR inside it. Ray makes its
# directories 0777 (ray._common.utils.try_make_directory_shared), again each time a process of
# the session starts: a chmod after ray.init is undone by the next worker. The private parent,
# which Ray never touches, keeps every other user out of whatever Ray loosens below it. A driver
# that is SIGKILLed leaves its directory behind (~260 KB of logs and sockets); the next embedded
# start removes those of drivers that are gone.
SESSION_PREFIX = "lth-ray-"
_OWNER_FILE = "lth-owner.json"
RAY_DIR = "r"  # short: Ray's socket paths must fit in 107 bytes


def _process_started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _record_owner(session_dir: str) -> None:
    owner = {"pid": os.getpid(), "started": _process_started(os.getpid()), "host": socket.gethostname()}
    with open(os.path.join(session_dir, _OWNER_FILE), "w") as f:
        json.dump(owner, f)


def _paths_in_use() -> str:
    """Every process's command line, joined (Ray's servers name their session directory there),
    and this user's processes' TMPDIR: a Ray worker's command line is its title (`ray::IDLE`),
    but its TMPDIR is inside the session directory (RayCluster sets it), and a worker that
    outlives its driver for a while still writes its logs there; removed under it, the session
    left empty folders behind."""
    import psutil

    lines = []
    for proc in psutil.process_iter(["cmdline", "uids"]):
        lines.append(" ".join(proc.info.get("cmdline") or ()))
        uids = proc.info.get("uids")
        if uids is not None and uids.real == os.getuid():
            try:
                lines.append(proc.environ().get("TMPDIR", "") + os.sep)
            except (psutil.Error, OSError):
                pass
    return "\n".join(lines)


def remove_stale_sessions(parent: str) -> list[str]:
    """Remove the session directories under `parent` whose driver is gone and which no running
    process names; returns them. Only this user's, marked by this host's drivers: another
    user's, one still being made (no owner file yet) or one of a live driver is left."""
    removed: list[str] = []
    in_use: str | None = None
    for path in sorted(glob.glob(os.path.join(parent, SESSION_PREFIX + "*"))):
        try:
            if os.lstat(path).st_uid != os.getuid() or not os.path.isdir(path):
                continue
            with open(os.path.join(path, _OWNER_FILE)) as f:
                owner = json.load(f)
            pid, started = int(owner["pid"]), owner.get("started")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if owner.get("host") != socket.gethostname():
            continue
        alive = _process_started(pid)
        if alive is not None and (started is None or abs(alive - float(started)) < 1.0):
            continue  # the driver runs (the same process: a reused pid started later)
        if in_use is None:
            in_use = _paths_in_use()
        if path + os.sep in in_use:
            continue  # a Ray server of that session outlived its driver: it still writes there
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def _ray_leaves_sigterm_alone() -> Iterator[None]:
    """ray.init installs SIGTERM handlers of its own (exit at once, or kill its processes and
    exit 1): while it starts, the driver's stays, so a SIGTERM then stops the sweep like one at
    any other time (exit 143, the lock released, Ray stopped). Not by blocking SIGTERM: every
    process Ray spawns would inherit the blocked signal, so its servers and workers would ignore
    a preemption's SIGTERM, and ray.shutdown would wait a second for each before killing it."""
    import ray._private.utils as ray_utils

    original = getattr(ray_utils, "set_sigterm_handler", None)
    if original is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    ray_utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler = original


class RayCluster:
    """ray.init / ray.shutdown for one sweep (or nothing, when Ray is already initialised)."""

    def __init__(self, address: str | None):
        self.address = address
        self._owned = False
        self._temp_dir: str | None = None

    def __enter__(self) -> "RayCluster":
        if not self.address:
            _keep_ray_on_loopback()
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
            for attempt in (1, 2):
                try:
                    self._start_local(quiet)
                    break
                except Exception as e:  # noqa: BLE001 - an interrupt (BaseException) is not retried
                    reason = " ".join(str(e).split())[:300] or type(e).__name__
                    if attempt == 2:
                        raise RayStartError(
                            f"the local Ray did not start, twice ({reason}); on a busy machine its servers can miss "
                            "their start-up deadline: rerun the command (done jobs are kept)") from None
                    logging.getLogger(__name__).warning("the local Ray did not start (%s); trying once more", reason)
                    try:
                        ray.shutdown()  # whatever part of it did start
                    except Exception:  # noqa: BLE001 - best effort before the second start
                        pass
        self._owned = True
        return self

    def _start_local(self, quiet: dict[str, Any]) -> None:
        """Start the embedded single-machine Ray in a private session directory (cleaned up on failure)."""
        import ray

        # a private session directory: never collide with another user's /tmp/ray (short:
        # Ray's socket paths must fit in 107 bytes; LTH_RAY_TMPDIR picks another parent)
        parent = os.environ.get("LTH_RAY_TMPDIR", "/tmp")
        try:
            remove_stale_sessions(parent)
        except Exception as e:  # noqa: BLE001 - housekeeping must never stop a sweep
            logging.getLogger(__name__).warning("could not clean stale Ray sessions in %s: %s", parent, e)
        self._temp_dir = tempfile.mkdtemp(prefix=SESSION_PREFIX, dir=parent)  # 0700, whatever the umask
        _record_owner(self._temp_dir)
        _install()  # a SIGTERM while Ray starts stops the driver like one at any other time
        # The workers' temporary files go inside the session directory, which is removed at the
        # end: W&B leaves a socket directory and media/artifact directories in $TMPDIR per
        # process, which a worker that is stopped (not exited) never removes.
        worker_tmp = os.path.join(self._temp_dir, "tmp")
        os.makedirs(worker_tmp)
        try:
            # the embedded cluster is this machine alone: its servers stay on loopback
            notice = _DropTokenAuthNotice()
            logging.getLogger(_TOKEN_AUTH_LOGGER).addFilter(notice)
            try:
                with _ray_leaves_sigterm_alone():
                    ray.init(num_cpus=os.cpu_count(), include_dashboard=False,
                             _temp_dir=os.path.join(self._temp_dir, RAY_DIR),
                             _node_ip_address=LOOPBACK, runtime_env={"env_vars": {"TMPDIR": worker_tmp}}, **quiet)
            finally:
                logging.getLogger(_TOKEN_AUTH_LOGGER).removeFilter(notice)
            self._owned = True
            _install()
        except BaseException:
            self.__exit__()  # __exit__ is not called when __enter__ raises
            raise

    def __exit__(self, *exc: Any) -> None:
        import ray

        if self._owned:
            ray.shutdown()
            self._owned = False
        if self._temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
