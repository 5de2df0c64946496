"""Files a job reads and writes: weights, masks, resumable checkpoints, results.

Every write is atomic (temporary file in the same directory, then rename), so a reader, or a
job resumed after a crash, never sees half a file. A write is durable (fsync before the rename)
unless the caller makes a directory durable at once later (`durable=False`, then `sync_dir`):
the trainer does so for a job's outputs before its resumable checkpoint and before result.json,
which mark them complete, so a machine crash can leave an output empty only where nothing says
the job got that far. Every read names the file and the reason when it fails, and never deletes
or overwrites what it could not read.
"""
from __future__ import annotations

import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A weights, mask or checkpoint file exists but cannot be used."""


def _atomic_write(path: str | os.PathLike, write, durable: bool = True) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: it creates 0600 files whatever the umask, and colleagues reading a shared
    # store could not load the tickets. 0666 minus the umask is what any other file gets.
    tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(obj: Any, path: str | os.PathLike, durable: bool = True) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f), durable)


def save_json(obj: Any, path: str | os.PathLike, durable: bool = True) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(obj, sort_keys=True).encode()), durable)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(directory: str | os.PathLike) -> None:
    """Every file in `directory`, and its entries, on disk. The fsyncs are issued together: the
    file system commits them as one journal transaction, where one after another each waits for
    its own (a small job's files: 5 syncs one by one cost twice what 5 together do on ext4)."""
    files = [e.path for e in os.scandir(directory) if e.is_file(follow_symlinks=False)]
    if len(files) > 1:
        with ThreadPoolExecutor(min(8, len(files))) as pool:
            list(pool.map(_fsync_path, files))
    elif files:
        _fsync_path(files[0])
    try:
        _fsync_path(str(directory))  # the renames
    except OSError:
        pass  # (a file system that cannot sync a directory: the files themselves are synced)


def _load(path: str | os.PathLike, what: str) -> Any:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/garbled files
        raise CheckpointError(f"{what} file {path} is corrupt or not a torch file: {type(e).__name__}: {e}") from None


def state_dict_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    sd = _load(path, "weights")
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"weights file {path} does not hold a state_dict of tensors")
    return sd


def load_mask(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    mask = _load(path, "mask")
    if not isinstance(mask, dict) or not all(
        isinstance(v, torch.Tensor) and v.dtype == torch.bool for v in mask.values()
    ):
        raise CheckpointError(f"mask file {path} does not hold a {{name: bool tensor}} dict")
    return mask


def load_resumable(path: str | os.PathLike, fingerprint: str) -> dict[str, Any] | None:
    """The in-job checkpoint at `path`, or None when there is none yet.

    `fingerprint` identifies the job: a checkpoint written by another job is refused rather
    than silently resumed from.
    """
    if not os.path.exists(path):
        return None
    ckpt = _load(path, "checkpoint")
    keys = {"fingerprint", "iteration", "model", "optimizer", "mask", "metrics", "rng"}
    if not isinstance(ckpt, dict) or not keys <= set(ckpt):
        raise CheckpointError(f"checkpoint file {path} is missing fields {sorted(keys - set(ckpt or {}))}")
    if ckpt["fingerprint"] != fingerprint:
        raise CheckpointError(
            f"checkpoint file {path} belongs to another job (fingerprint {ckpt['fingerprint']} != {fingerprint}); "
            "move it away or use a fresh output directory"
        )
    return ckpt
