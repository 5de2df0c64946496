"""The Ray actor that runs jobs: one per slot of the cluster, each holding a `Runtime`.

An actor lives for the whole sweep, so its device and its data cache serve every job it runs.
`run` runs one job; `run_pack` runs several packable train jobs in one call
(trainers.packed.train_packed, when the resolved `resources.pack` is > 1) and returns one record per job.
Jobs exchange store paths, never tensors: inputs are read from the store (copied to a local
scratch directory first when the store is remote) and outputs written back to
`artifacts/<job_id>/`. The actor returns a JSON-able record; the driver alone writes results.

Test hook (never set in production): LTH_FAULT_INJECT, read by the driver and handed to the
actors, is a comma-separated list of `MODE:JOB_ID_PREFIX[:ARG]` entries:
  raise:<prefix>[:N]      the job raises RuntimeError on its first N attempts (default: every one)
  delay:<prefix>:<secs>   first attempt only: sleep <secs> at each evaluation (a slow job to kill)
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from orchestrator.graph import Job
from orchestrator.integrity import (CorruptInput, aside_name, checkpoint_problem, result_problem, seal,
                                   set_aside, verify_input)
from orchestrator.jobprogress import EvalReporter
from orchestrator.store import CHECKPOINT, CHECKSUMS, DONE, FAILED, RESULT, Store
from orchestrator.tracking import JobTracker, TrackingSettings


# the store or the scratch disk refused a write: every job would fail the same way
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM})


class StorageError(RuntimeError):
    """A job could not write its files (a full disk, a read-only or forbidden store): not the
    job's fault, and no retry helps; the driver stops the sweep."""


def is_storage_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS


def _storage_cause(exc: BaseException | None) -> OSError | None:
    """The storage OSError behind `exc`, if any: torch.save's zip writer, for one, reports a
    full disk as a RuntimeError raised while handling the OSError."""
    seen = 0
    while exc is not None and seen < 10:
        if is_storage_error(exc):
            return exc  # type: ignore[return-value]
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


@contextlib.contextmanager
def _storage_errors_named() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        e = _storage_cause(exc)
        if e is None:
            raise
        raise StorageError(f"{storage_reason(e)} (errno {errno.errorcode.get(e.errno, e.errno)})") from None


def storage_reason(e: OSError) -> str:
    """A storage error in words: what happened, and the file when the error names one (an
    OSError raised by a flush or a close names none)."""
    return f"{e.strerror or e}: {e.filename}" if e.filename else str(e.strerror or e)


@dataclass(frozen=True)
class WorkerContext:
    store_root: str
    tracking: TrackingSettings
    checkpoint_every_iters: int = 0
    checkpoint_every_seconds: float = 300.0
    num_cpus: float = 1.0
    fault_inject: str = ""  # the LTH_FAULT_INJECT test hook (see the module docstring)
    pack_strategy: str = "auto"  # train_packed's strategy for run_pack (resources.pack_strategy)
    scratch_dir: str | None = None  # remote stores: where inputs/outputs are staged


def _faults(spec: str, job_id: str) -> list[tuple[str, str]]:
    out = []
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        mode, prefix, *arg = entry.split(":")
        if job_id.startswith(prefix):
            out.append((mode, arg[0] if arg else ""))
    return out


class _OutputMirror:
    """Uploads the scratch output directory's new or changed files (checkpoint.pt, mask.pt,
    w_<k>.pt) to the store while a job runs on a remote store, so a job re-queued on another
    node resumes from its last checkpoint instead of starting over. Temporaries (".name") are
    never uploaded: the trainers write atomically through them."""

    def __init__(self, store: Store, local_dir: str, job_id: str, period: float = 2.0):
        self.store, self.local_dir, self.job_id, self.period = store, local_dir, job_id, period
        self._stop = threading.Event()
        self._seen = self._mtimes()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _mtimes(self) -> dict[str, float]:
        out = {}
        for name in os.listdir(self.local_dir):
            if not name.startswith("."):
                try:
                    out[name] = os.path.getmtime(os.path.join(self.local_dir, name))
                except FileNotFoundError:
                    pass
        return out

    def sync(self, skip: tuple[str, ...] = ()) -> None:
        for name, mtime in self._mtimes().items():
            if name not in skip and self._seen.get(name) != mtime:
                self.store.upload(os.path.join(self.local_dir, name), Store.artifact(self.job_id, name))
                self._seen[name] = mtime

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.sync()
            except OSError:
                pass  # the next round retries; a missed upload costs only progress

    def __enter__(self) -> "_OutputMirror":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


class JobRunner:
    """Wrapped with `ray.remote(...)` by the scheduler; a plain class, so tests can run it too."""

    def __init__(self, ctx: WorkerContext):
        import torch

        from trainers.runtime import Runtime

        torch.set_num_threads(max(1, int(ctx.num_cpus)))
        self.ctx = ctx
        self.store = Store(ctx.store_root)
        self.rt = Runtime(cpus=max(1, int(ctx.num_cpus)))
        # per job id, filled while it runs and put in its record: the sha256 of its artifacts,
        # and what was done about a checkpoint that could not be resumed from
        self._checksums: dict[str, dict[str, str]] = {}
        self._notes: dict[str, list[str]] = {}

    def info(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "node": _node_id(), "device": str(self.rt.device)}

    def run(self, job: Job, attempt: int) -> dict[str, Any]:
        with job_log(self.store, [job.id], attempt):
            started = time.time()
            delay = self._injected_faults(job, attempt)
            tracker = JobTracker(self.ctx.tracking, job, attempt)
            tracker.start()
            reporter = EvalReporter(self.store, job) if job.kind == "train" else None
            self.rt.on_metric = _metric_callback(tracker, delay, reporter)
            try:
                with _storage_errors_named():
                    if self.store.is_remote:
                        result = self._run_staged(job)
                    else:
                        result = self._run(job, self.store.local_path(Store.artifact(job.id)), self.store.local_path)
            except BaseException:
                tracker.finish(failed=True)
                raise
            finally:
                self.rt.on_metric = None
            return self._record(job, result, tracker, started)

    def run_pack(self, jobs: list[Job], attempts: list[int]) -> list[dict[str, Any]]:
        with job_log(self.store, [job.id for job in jobs], max(attempts, default=1)):
            return self._run_pack(jobs, attempts)

    def _run_pack(self, jobs: list[Job], attempts: list[int]) -> list[dict[str, Any]]:
        """Packable train jobs (the scheduler checked `packing_problem`) trained in one call;
        one record per job, in order, each as `run` returns it plus `pack_size` and
        `packed_with`. Any member's exception fails the whole call (the scheduler retries
        every member); what members finished is on disk (result.json) and is not redone."""
        from trainers.packed import train_packed

        started = time.time()
        if len(jobs) != len(attempts):
            raise ValueError(f"run_pack: {len(jobs)} jobs but {len(attempts)} attempts")
        not_train = [job.id for job in jobs if job.kind != "train"]
        if not_train:
            raise ValueError(f"run_pack: only train jobs can be packed, not {not_train}")
        delays = [self._injected_faults(job, attempt) for job, attempt in zip(jobs, attempts)]
        trackers = [JobTracker(self.ctx.tracking, job, attempt) for job, attempt in zip(jobs, attempts)]
        for tracker in trackers:
            tracker.start()
        try:
            with _storage_errors_named(), contextlib.ExitStack() as staging:
                specs, paths = [], []
                for job in jobs:
                    if self.store.is_remote:
                        out_dir, input_path = staging.enter_context(self._staged(job))
                    else:
                        out_dir, input_path = self.store.local_path(Store.artifact(job.id)), self.store.local_path
                    spec, p = self._train_paths(job, out_dir, input_path)
                    specs.append(spec)
                    paths.append(p)
                with contextlib.ExitStack() as named:
                    for job, p in zip(jobs, paths):
                        named.enter_context(_inputs_named(job, p))
                    results = train_packed(
                        specs, paths, self.rt,
                        on_metrics=[_metric_callback(t, d, EvalReporter(self.store, job))
                                    for t, d, job in zip(trackers, delays, jobs)],
                        strategy=self.ctx.pack_strategy,  # type: ignore[arg-type]
                    )
                for job, p in zip(jobs, paths):
                    self._checksums[job.id] = seal(p.out_dir)
                results = [_store_relative(job, dataclasses.asdict(r)) for job, r in zip(jobs, results)]
        except BaseException:
            for tracker in trackers:
                tracker.finish(failed=True)
            raise
        records = []
        for job, result, tracker in zip(jobs, results, trackers):
            record = self._record(job, result, tracker, started)
            record["pack_size"] = len(jobs)
            record["packed_with"] = [other.id for other in jobs if other.id != job.id]
            records.append(record)
        return records

    def _injected_faults(self, job: Job, attempt: int) -> float:
        """The LTH_FAULT_INJECT hook: raise now, or return the delay per evaluation (0: none)."""
        faults = _faults(self.ctx.fault_inject, job.id)
        for mode, arg in faults:
            if mode == "raise" and (not arg or attempt <= int(arg)):
                raise RuntimeError(f"LTH_FAULT_INJECT: injected failure of job {job.id} (attempt {attempt})")
        return next((float(arg) for mode, arg in faults if mode == "delay" and attempt == 1), 0.0)

    def _record(self, job: Job, result: dict[str, Any], tracker: JobTracker, started: float) -> dict[str, Any]:
        summary = {k: v for k, v in result.items() if isinstance(v, (int, float)) and v is not None}
        if job.kind == "interpolate":
            tracker.log_interpolation(result.get("rows", []), result.get("instability", []))
        tracker.finish(summary)
        record = {
            "job_id": job.id,
            "kind": job.kind,
            "result": result,
            **self.info(),
            "device": result.get("device", str(self.rt.device)),
            "started": started,  # (the worker's clock: when the call began running, not when it was queued)
            "wall_seconds": time.time() - started,
            "checksums": self._checksums.pop(job.id, {}),
        }
        notes = self._notes.pop(job.id, []) + tracker.problems
        if notes:
            record["notes"] = notes
        return record

    # ---- running a job against local paths --------------------------------------------------

    def _run(self, job: Job, out_dir: str, input_path: Any) -> dict[str, Any]:
        """`input_path(rel)` maps a store-relative input to a local path."""
        from orchestrator.cluster import localize_job_spec
        from trainers.api import run_interpolate_job, run_train_job
        from trainers.jobs import InterpolatePaths

        if job.kind == "train":
            spec, paths = self._train_paths(job, out_dir, input_path)
            with _inputs_named(job, paths):
                result = run_train_job(spec, paths, self.rt)
            self._checksums[job.id] = seal(out_dir)
            return _store_relative(job, dataclasses.asdict(result))
        if job.kind == "interpolate":
            spec = localize_job_spec(job.spec)
            inputs = self._verified_inputs(job, input_path)
            with _inputs_named(job, inputs):
                return dataclasses.asdict(run_interpolate_job(spec, InterpolatePaths(**inputs), self.rt))
        raise ValueError(f"job {job.id}: unknown kind {job.kind!r}")

    def _verified_inputs(self, job: Job, input_path: Any) -> dict[str, str]:
        """{role: local path} of a job's inputs, each checked against its producer's checksum."""
        inputs = {}
        for role, (src, name) in job.inputs.items():
            local = input_path(Store.artifact(src, name))
            verify_input(self.store, src, name, local)
            inputs[role] = local
        return inputs

    def _checkpoint_or_start_over(self, job: Job, out_dir: str) -> None:
        """An in-job checkpoint that cannot be read is set aside: the job starts over."""
        path = os.path.join(out_dir, CHECKPOINT)
        if not os.path.exists(path):
            return
        problem = checkpoint_problem(path)
        if problem is None:
            return
        aside = aside_name(CHECKPOINT)
        os.replace(path, os.path.join(out_dir, aside))
        if self.store.is_remote:  # the staged copy came from the store: set that one aside too
            set_aside(self.store, job.id, CHECKPOINT)
        self._notes.setdefault(job.id, []).append(
            f"{CHECKPOINT} was unreadable ({problem}): set aside as {aside}, the job started over"
        )

    def _result_or_start_over(self, job: Job, out_dir: str) -> None:
        """A result an earlier run left in `out_dir` (the trainer returns it without training) is
        reused only when every output matches the checksums.json the worker wrote when it
        produced them; otherwise the damaged files are set aside and the job trains again."""
        if self.rt.rank != 0:  # a gang's other ranks write nothing: rank 0 decides, they follow its files
            return
        found = result_problem(out_dir)
        if found is None:
            return
        problem, damaged = found
        kept = []
        for name in damaged:
            local = os.path.join(out_dir, name)
            if self.store.is_remote:  # the staged copy came from the store: set that one aside
                kept.append(set_aside(self.store, job.id, name))
                os.unlink(local)
            else:
                kept.append(Store.artifact(job.id, aside_name(name)))
                os.replace(local, self.store.local_path(kept[-1]))
        for name in (RESULT, CHECKSUMS):  # what made the trainer reuse the outputs
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(out_dir, name))
            if self.store.is_remote:
                self.store.delete(Store.artifact(job.id, name))
        aside = f"; set aside as {', '.join(filter(None, kept))}" if kept else ""
        self._notes.setdefault(job.id, []).append(
            f"its earlier result could not be verified ({problem}){aside}: the job trained again"
        )

    def _train_paths(self, job: Job, out_dir: str, input_path: Any) -> tuple[Any, Any]:
        """The trainer's (TrainJob, TrainPaths) of a train job whose outputs go to `out_dir`."""
        from orchestrator.cluster import localize_job_spec
        from trainers.jobs import TrainPaths

        # read the data set from this node's copy (LTH_DATA_CACHE); the id keeps the shared root
        spec = localize_job_spec(job.spec)
        inputs = self._verified_inputs(job, input_path)
        os.makedirs(out_dir, exist_ok=True)
        self._checkpoint_or_start_over(job, out_dir)
        self._result_or_start_over(job, out_dir)
        paths = TrainPaths(
            out_dir=out_dir,
            checkpoint_every_iters=self.ctx.checkpoint_every_iters,
            checkpoint_every_seconds=self.ctx.checkpoint_every_seconds,
            **inputs,
        )
        return spec, paths

    def _run_staged(self, job: Job) -> dict[str, Any]:
        with self._staged(job) as (out_dir, stage):
            return self._run(job, out_dir, stage)

    @contextlib.contextmanager
    def _staged(self, job: Job, writes: bool = True) -> Iterator[tuple[str, Callable[[str], str]]]:
        """Remote store: inputs and any partial outputs (a resumable checkpoint, the mask, W_k
        written before an interruption) down to scratch; outputs back up as they appear.
        Yields (local output directory, store-relative input -> local path). writes=False: a
        rank other than 0 of a gang, which reads the same files and uploads nothing."""
        name = job.id if writes else f"{job.id}.reader-{os.getpid()}"  # a reader never touches rank 0's scratch
        scratch = os.path.join(self.ctx.scratch_dir or tempfile.gettempdir(), "lth-scratch", name)
        out_dir = os.path.join(scratch, "out")
        os.makedirs(out_dir, exist_ok=True)

        def stage(rel: str) -> str:
            local = os.path.join(scratch, "in", rel)
            if not os.path.exists(local):
                self.store.download(rel, local)
            return local

        for name in self.store.list_files(Store.artifact(job.id)):
            if name not in (DONE, FAILED) and not os.path.exists(os.path.join(out_dir, name)):
                self.store.download(Store.artifact(job.id, name), os.path.join(out_dir, name))
        if not writes:
            try:
                yield out_dir, stage
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return
        try:
            mirror = _OutputMirror(self.store, out_dir, job.id)
            with mirror:
                yield out_dir, stage
            mirror.sync(skip=(CHECKPOINT,))
            self.store.delete(Store.artifact(job.id, CHECKPOINT))
        except BaseException:
            # keep the scratch outputs for a retry on this node; drop the staged inputs
            shutil.rmtree(os.path.join(scratch, "in"), ignore_errors=True)
            raise
        shutil.rmtree(scratch, ignore_errors=True)


def log_name(attempt: int) -> str:
    return f"attempt-{attempt}.log"


@contextlib.contextmanager
def job_log(store: Store, job_ids: list[str], attempt: int) -> Iterator[None]:
    """Everything the job prints, warns or logs, and its traceback if it fails, kept as
    `artifacts/<id>/attempt-<n>.log` (`lth logs`). On a local store the file is written as the
    job goes, so it survives a killed worker; on a remote one it is uploaded at the end."""
    import logging
    import traceback as tb
    import warnings

    local = not store.is_remote
    if local:
        path = store.local_path(Store.artifact(job_ids[0], log_name(attempt)))
        os.makedirs(os.path.dirname(path), exist_ok=True)
    else:
        fd, path = tempfile.mkstemp(prefix="lth-job-", suffix=".log")
        os.close(fd)
    f = open(path, "a", buffering=1, encoding="utf-8", errors="replace")

    def note(text: str) -> None:
        try:
            f.write(text)
        except OSError:
            pass  # a full disk: the job's own error says so

    note(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} job {' '.join(job_ids)} attempt {attempt} "
         f"on {socket.gethostname()} pid {os.getpid()}\n")
    handler = logging.StreamHandler(f)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f), warnings.catch_warnings():
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: note(
                warnings.formatwarning(message, category, filename, lineno, line))
            yield
        note(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} finished\n")
    except BaseException:
        note(tb.format_exc())
        note(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} failed\n")
        raise
    finally:
        root.removeHandler(handler)
        try:
            f.close()
        except OSError:
            pass
        try:
            for job_id in job_ids[1:] if local else job_ids:  # pack-mates (and remote stores) get a copy
                store.upload(path, Store.artifact(job_id, log_name(attempt)))
        except OSError:
            pass  # the log is a convenience: never the reason a job fails
        finally:
            if not local:
                os.remove(path)


@contextlib.contextmanager
def _inputs_named(job: Job, paths: Any) -> Iterator[None]:
    """A loader error naming one of the job's input files (a record older than checksums, or a
    file damaged since) becomes CorruptInput: its producer is redone, not this job retried."""
    from trainers.checkpoint import CheckpointError

    try:
        yield
    except CheckpointError as e:
        local = paths if isinstance(paths, dict) else dataclasses.asdict(paths)
        for role, (src, name) in job.inputs.items():
            path = local.get(role)
            if isinstance(path, str) and path in str(e):
                raise CorruptInput(src, name, str(e)) from None
        raise


def _metric_callback(tracker: JobTracker, delay: float, reporter: EvalReporter | None = None) -> Callable[[Any], None]:
    def on_metric(row: Any) -> None:
        tracker.log_metric(row)
        if reporter is not None:  # the attempt log's line per evaluation, and progress.json
            reporter(row)
        if delay:
            time.sleep(delay)

    return on_metric


def _store_relative(job: Job, result: dict[str, Any]) -> dict[str, Any]:
    """A train result's artifact paths, relative to the store wherever the job ran."""
    result["weights_path"] = Store.artifact(job.id, os.path.basename(result["weights_path"]))
    result["mask_path"] = Store.artifact(job.id, os.path.basename(result["mask_path"]))
    result["saved_weights"] = {
        str(k): Store.artifact(job.id, os.path.basename(p)) for k, p in result["saved_weights"].items()
    }
    return result


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:  # noqa: BLE001 - outside Ray (tests, benchmarks)
        return ""
