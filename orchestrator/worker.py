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
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from orchestrator.graph import Job
from orchestrator.store import CHECKPOINT, DONE, FAILED, Store
from orchestrator.tracking import JobTracker, TrackingSettings


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

    def info(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "node": _node_id(), "device": str(self.rt.device)}

    def run(self, job: Job, attempt: int) -> dict[str, Any]:
        started = time.time()
        delay = self._injected_faults(job, attempt)
        tracker = JobTracker(self.ctx.tracking, job, attempt)
        tracker.start()
        self.rt.on_metric = _metric_callback(tracker, delay)
        try:
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
            with contextlib.ExitStack() as staging:
                specs, paths = [], []
                for job in jobs:
                    if self.store.is_remote:
                        out_dir, input_path = staging.enter_context(self._staged(job))
                    else:
                        out_dir, input_path = self.store.local_path(Store.artifact(job.id)), self.store.local_path
                    spec, p = self._train_paths(job, out_dir, input_path)
                    specs.append(spec)
                    paths.append(p)
                results = train_packed(
                    specs, paths, self.rt,
                    on_metrics=[_metric_callback(t, d) for t, d in zip(trackers, delays)],
                    strategy=self.ctx.pack_strategy,  # type: ignore[arg-type]
                )
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
        tracker.finish(summary)
        return {
            "job_id": job.id,
            "kind": job.kind,
            "result": result,
            **self.info(),
            "device": result.get("device", str(self.rt.device)),
            "wall_seconds": time.time() - started,
        }

    # ---- running a job against local paths --------------------------------------------------

    def _run(self, job: Job, out_dir: str, input_path: Any) -> dict[str, Any]:
        """`input_path(rel)` maps a store-relative input to a local path."""
        from orchestrator.cluster import localize_job_spec
        from trainers.api import run_interpolate_job, run_train_job
        from trainers.jobs import InterpolatePaths

        if job.kind == "train":
            spec, paths = self._train_paths(job, out_dir, input_path)
            return _store_relative(job, dataclasses.asdict(run_train_job(spec, paths, self.rt)))
        if job.kind == "interpolate":
            spec = localize_job_spec(job.spec)
            inputs = {role: input_path(Store.artifact(src, name)) for role, (src, name) in job.inputs.items()}
            return dataclasses.asdict(run_interpolate_job(spec, InterpolatePaths(**inputs), self.rt))
        raise ValueError(f"job {job.id}: unknown kind {job.kind!r}")

    def _train_paths(self, job: Job, out_dir: str, input_path: Any) -> tuple[Any, Any]:
        """The trainer's (TrainJob, TrainPaths) of a train job whose outputs go to `out_dir`."""
        from orchestrator.cluster import localize_job_spec
        from trainers.jobs import TrainPaths

        # read the data set from this node's copy (LTH_DATA_CACHE); the id keeps the shared root
        spec = localize_job_spec(job.spec)
        inputs = {role: input_path(Store.artifact(src, name)) for role, (src, name) in job.inputs.items()}
        os.makedirs(out_dir, exist_ok=True)
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
    def _staged(self, job: Job) -> Iterator[tuple[str, Callable[[str], str]]]:
        """Remote store: inputs and any partial outputs (a resumable checkpoint, the mask, W_k
        written before an interruption) down to scratch; outputs back up as they appear.
        Yields (local output directory, store-relative input -> local path)."""
        scratch = os.path.join(self.ctx.scratch_dir or tempfile.gettempdir(), "lth-scratch", job.id)
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


def _metric_callback(tracker: JobTracker, delay: float) -> Callable[[Any], None]:
    def on_metric(row: Any) -> None:
        tracker.log_metric(row)
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
