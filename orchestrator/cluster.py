"""Multi-node helpers: the per-node data cache and job slots per node (the experiment lock
across hosts is orchestrator/lock.py).

Per-node data cache: a data set lives once on the shared store (a directory every node mounts, or an object-store
URL). Training reads it many times, so each node keeps its own local copy: the first job on a
node that needs a data set copies it into `LTH_DATA_CACHE` (a node-local directory), under a
file lock so that concurrent jobs on that node wait for one copy instead of making several;
every later job on the node reads the local copy. Once per node, not once per job.

Only the path a job *reads* changes: the job's spec (and so its id) keeps the shared
`data.root`, so a job's id is the same on every node, cached or not. Data sets are treated as
immutable: to refresh one, delete its directory under the cache.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from typing import Iterator, TypeVar

from trainers.jobs import DataConfig

CACHE_ENV = "LTH_DATA_CACHE"
_COMPLETE = ".complete.json"  # written last: a copy without it is incomplete and is redone

SpecT = TypeVar("SpecT")


def node_cache_dir() -> str | None:
    """The node's data cache directory (from this process's environment), or None: no cache."""
    return os.environ.get(CACHE_ENV) or None


def _is_url(root: str) -> bool:
    return "://" in root and not root.startswith("file://")


@contextmanager
def _locked(path: str) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # between processes of one node: the cache is node-local
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _copy(src: str, dest: str) -> None:
    """Copy a file or directory tree (local path or URL) to the local path `dest`."""
    if _is_url(src):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(src)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"data.root: {src} does not exist")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        pafs.copy_files(path, dest, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        return
    src = src[len("file://"):] if src.startswith("file://") else src
    if os.path.isdir(src):
        shutil.copytree(src, dest, symlinks=False)
    elif os.path.isfile(src):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy2(src, dest)
    else:
        raise FileNotFoundError(f"data.root: {src} does not exist (neither a file nor a directory)")


def ensure_node_copy(src: str, cache_dir: str) -> tuple[str, bool]:
    """The node-local copy of `src` (a file or directory, local or URL): (its path, whether this
    call made it). Safe to call from many processes of one node at once: one copies, the
    others wait and reuse it. A copy interrupted half-way is discarded and redone."""
    src = os.path.expanduser(src)
    key = hashlib.sha256(src.rstrip("/").encode()).hexdigest()[:16]
    name = os.path.basename(src.rstrip("/")) or "data"
    entry = os.path.join(cache_dir, key)
    dest = os.path.join(entry, name)
    complete = os.path.join(entry, _COMPLETE)
    os.makedirs(cache_dir, exist_ok=True)
    if os.path.exists(complete):  # the common case, no lock needed
        return dest, False
    with _locked(os.path.join(cache_dir, f".{key}.lock")):
        if os.path.exists(complete):
            return dest, False
        shutil.rmtree(entry, ignore_errors=True)  # an interrupted copy
        staging = os.path.join(cache_dir, f".{key}.{uuid.uuid4().hex}.tmp")
        try:
            started = time.time()
            _copy(src, os.path.join(staging, name))
            with open(os.path.join(staging, _COMPLETE), "w") as fh:
                json.dump({"source": src, "seconds": time.time() - started, "pid": os.getpid()}, fh)
            os.rename(staging, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dest, True


def localize_data(cfg: DataConfig, cache_dir: str | None) -> DataConfig:
    """`cfg` reading from the node-local copy of its data set (same cfg when there is no cache,
    no root, or the root is already in the cache)."""
    if not cache_dir or not cfg.root:
        return cfg
    root = os.path.expanduser(cfg.root)
    cache = os.path.abspath(cache_dir)
    if not _is_url(root) and os.path.abspath(root).startswith(cache + os.sep):
        return cfg
    local, _ = ensure_node_copy(root, cache)
    return dataclasses.replace(cfg, root=local)


def localize_job_spec(spec: SpecT, cache_dir: str | None = None) -> SpecT:
    """A TrainJob or InterpolateJob whose data is read from this node's cache (LTH_DATA_CACHE
    when `cache_dir` is None). For running only: the job's id is computed from the original."""
    cache_dir = cache_dir if cache_dir is not None else node_cache_dir()
    train = getattr(spec, "train", None)
    if not cache_dir or train is None:
        return spec
    data = localize_data(train.data, cache_dir)
    if data is train.data:
        return spec
    return dataclasses.replace(spec, train=dataclasses.replace(train, data=data))  # type: ignore[type-var]


# ---- job slots --------------------------------------------------------------------------------


def job_slots(nodes: list[dict], num_cpus: float, num_gpus: float, max_workers: int | None = None) -> int:
    """How many job actors the cluster can hold at once: per ALIVE node, how many jobs of
    (num_cpus, num_gpus) fit in its own resources, summed. `nodes` is `ray.nodes()`.

    Per node, not from `ray.cluster_resources()` totals: a job cannot span nodes, so totals
    over-count (three nodes with 1 GPU each hold 6 jobs of 0.4 GPU, not 7), and an actor beyond
    what fits waits for resources forever."""
    eps = 1e-9
    total = 0
    for node in nodes:
        if not node.get("Alive", node.get("alive", False)):
            continue
        res = node.get("Resources", {})
        fits = []
        if num_cpus > 0:
            fits.append(int(res.get("CPU", 0.0) / num_cpus + eps))
        if num_gpus > 0:
            fits.append(int(res.get("GPU", 0.0) / num_gpus + eps))
        total += min(fits) if fits else 1
    return total if max_workers is None else min(total, max_workers)
