"""Artifact checksums, and what a job does with an input or a checkpoint it cannot trust.

A finished job's done record carries `checksums`: {artifact file name: sha256} of the files it
wrote. Before a job trains on an input (a parent's weights.pt, mask.pt, w_<k>.pt), the worker
checks the file against the checksum its producer recorded. A mismatch, or an input the loader
cannot read, raises `CorruptInput`: the driver then sets the damaged file aside, redoes the
producer, and runs the job after it. Nothing is trained on a damaged input, and no person has
to delete files for the sweep to go on.

A job's own in-job checkpoint.pt has no record (it is rewritten while the job runs): one that
cannot be read is set aside and the job starts over from its inputs.
"""
from __future__ import annotations

import hashlib
import os
import time

from orchestrator.store import Store

_CHUNK = 1 << 22


class CorruptInput(RuntimeError):
    """Input `name` of a job, written by job `producer`, is damaged (`reason`)."""

    def __init__(self, producer: str, name: str, reason: str):
        super().__init__(producer, name, reason)  # all in args: the exception crosses Ray by pickle
        self.producer, self.name, self.reason = producer, name, reason

    def __str__(self) -> str:
        return f"{Store.artifact(self.producer, self.name)}: {self.reason}"


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checksums(out_dir: str, names: list[str]) -> dict[str, str]:
    """sha256 of the named files of a job's output directory (those that exist)."""
    return {n: sha256_file(os.path.join(out_dir, n)) for n in sorted(set(names))
            if os.path.isfile(os.path.join(out_dir, n))}


def verify_input(store: Store, producer: str, name: str, local_path: str) -> None:
    """Raise CorruptInput unless `local_path` (a copy of artifact `name` of `producer`) matches
    the checksum in the producer's done record. Records older than checksums are trusted."""
    try:
        record = store.done_record(producer)
    except FileNotFoundError:
        raise CorruptInput(producer, "done.json", "missing: the producing job is not done") from None
    except (OSError, ValueError) as e:
        raise CorruptInput(producer, "done.json", f"unreadable ({e})") from None
    expected = (record.get("checksums") or {}).get(name) if isinstance(record, dict) else None
    if expected is None:
        return
    if not os.path.isfile(local_path):
        raise CorruptInput(producer, name, "missing")
    actual = sha256_file(local_path)
    if actual != expected:
        raise CorruptInput(producer, name, f"checksum mismatch (sha256 {actual[:12]}, recorded {expected[:12]}; "
                                          f"{os.path.getsize(local_path)} bytes)")


def set_aside(store: Store, job_id: str, name: str) -> str | None:
    """Move a damaged artifact out of the way (kept, for a person to look at, as
    `<name>.corrupt-<unix time>`); returns the new store-relative path, None if it was gone."""
    rel = Store.artifact(job_id, name)
    if not store.exists(rel):
        return None
    aside = Store.artifact(job_id, f"{name}.corrupt-{int(time.time())}")
    store.write_bytes(aside, store.read_bytes(rel))
    store.delete(rel)
    return aside


def checkpoint_problem(path: str) -> str | None:
    """Why the in-job checkpoint at `path` cannot be resumed from (None: it loads)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for truncated or garbled files
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None if isinstance(ckpt, dict) else "not a checkpoint dict"
