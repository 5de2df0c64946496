"""Artifact checksums, and what a job does with an input or a checkpoint it cannot trust.

A finished job's done record carries `checksums`: {artifact file name: sha256} of the files it
wrote. Before a job trains on an input (a parent's weights.pt, mask.pt, w_<k>.pt), the worker
checks the file against the checksum its producer recorded. A mismatch, or an input the loader
cannot read, raises `CorruptInput`: the driver then sets the damaged file aside, redoes the
producer, and runs the job after it. Nothing is trained on a damaged input, and no person has
to delete files for the sweep to go on.

A job's own in-job checkpoint.pt has no record (it is rewritten while the job runs): one that
cannot be read is set aside and the job starts over from its inputs.

A job's own finished outputs are trusted on the same terms. The worker that produces them
writes checksums.json ({file: sha256} of result.json and every .pt output, `seal`) before it
returns, and the done record carries the same sums. A job run again with its outputs still there
(its done record lost or unreadable, or the driver died before writing it) reuses them only when
every file matches checksums.json (`result_problem`); otherwise the damaged files are set aside
and the job trains again from its verified inputs. Nothing is ever hashed into a record that was
not verified first.

A file set aside is renamed `<name>.<why>-<UTC time>-<random>` (`aside_name`): two set-asides
of one file never take the same name, whenever they happen and whoever does them.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid

from orchestrator.store import CHECKPOINT, CHECKSUMS, RESULT, Store, aside_name  # noqa: F401 - aside_name re-exported

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


def set_aside(store: Store, job_id: str, name: str, why: str = "corrupt") -> str | None:
    """Move a damaged artifact out of the way (kept, for a person to look at, under
    `aside_name`); returns the new store-relative path, None if it was gone."""
    rel = Store.artifact(job_id, name)
    if not store.exists(rel):
        return None
    aside = Store.artifact(job_id, aside_name(name, why))
    while store.exists(aside):  # (48 random bits: never in practice; never silently either)
        aside = Store.artifact(job_id, aside_name(name, why))
    store.write_bytes(aside, store.read_bytes(rel))
    store.delete(rel)
    return aside


def output_names(out_dir: str) -> list[str]:
    """The outputs of a finished train job in `out_dir`: result.json and every .pt file except the
    in-job checkpoint (weights, mask, rewinding points)."""
    names = [n for n in os.listdir(out_dir) if n.endswith(".pt") and n != CHECKPOINT and not n.startswith(".")]
    if os.path.isfile(os.path.join(out_dir, RESULT)):
        names.append(RESULT)
    return sorted(names)


def _own_sum(sums: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps({k: v for k, v in sums.items() if k != CHECKSUMS}, sort_keys=True).encode()).hexdigest()


def with_own_sum(sums: dict[str, str]) -> dict[str, str]:
    """What checksums.json holds: the outputs' sums and, under its own name, the sum of those
    (a damaged checksums.json is then told from a damaged output: it is the one blamed)."""
    return {**sums, CHECKSUMS: _own_sum(sums)}


def seal(out_dir: str) -> dict[str, str]:
    """Hash the outputs a job has just produced into checksums.json (atomically); returns the
    sums (the done record carries them too). Called by the worker, right after the trainer."""
    sums = checksums(out_dir, output_names(out_dir))
    path = os.path.join(out_dir, CHECKSUMS)
    tmp = os.path.join(out_dir, f".{CHECKSUMS}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(with_own_sum(sums), f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return sums


def seal_from_record(store: Store, job_id: str) -> bool:
    """A done job from before checksums.json that runs again reusing its outputs (a dense run that
    gains a rewinding point): write its checksums.json from the sums its worker put in the done
    record. result.json had no sum then: it is covered only if it still says what the record (the
    source of the job's rows) says. Returns whether checksums.json exists now."""
    if store.exists(Store.artifact(job_id, CHECKSUMS)):
        return True
    try:
        record = store.done_record(job_id)
        raw = store.read_bytes(Store.artifact(job_id, RESULT))
        result = json.loads(raw)
    except (OSError, ValueError):
        return False
    sums = record.get("checksums") if isinstance(record, dict) else None
    kept = record.get("result") if isinstance(record, dict) else None
    if not sums or not isinstance(kept, dict) or not isinstance(result, dict):
        return False
    said = ("test_loss", "test_accuracy", "train_loss", "train_accuracy", "density", "start_iter", "end_iter", "metrics")
    if any(result.get(k) != kept.get(k) for k in said):
        return False
    store.write_json(Store.artifact(job_id, CHECKSUMS), with_own_sum({**sums, RESULT: hashlib.sha256(raw).hexdigest()}))
    return True


def result_problem(out_dir: str) -> tuple[str, list[str]] | None:
    """Why the finished result left in `out_dir` cannot be reused, and which of its files are
    damaged (to set aside); None when there is no result.json, or when every output matches the
    checksums.json written when it was produced (and no output lacks a sum)."""
    if not os.path.isfile(os.path.join(out_dir, RESULT)):
        return None
    path = os.path.join(out_dir, CHECKSUMS)
    if not os.path.isfile(path):
        return f"no {CHECKSUMS}: its outputs cannot be verified", []
    try:
        with open(path) as f:
            sums = json.load(f)
        if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
            raise ValueError("not a {file: sha256} object")
    except (OSError, ValueError) as e:
        return f"{CHECKSUMS} unreadable ({type(e).__name__}: {e})", [CHECKSUMS]
    if CHECKSUMS in sums and sums[CHECKSUMS] != _own_sum(sums):  # (older files have no own sum)
        return f"{CHECKSUMS} does not match its own sum: its outputs cannot be verified", [CHECKSUMS]
    sums = {k: v for k, v in sums.items() if k != CHECKSUMS}
    problems, damaged = [], []
    for name in output_names(out_dir):
        if name not in sums:
            problems.append(f"{name} has no checksum")
            damaged.append(name)
        elif sha256_file(os.path.join(out_dir, name)) != sums[name]:
            problems.append(f"{name} does not match its checksum")
            damaged.append(name)
    problems += [f"{name} is missing" for name in sorted(sums) if not os.path.isfile(os.path.join(out_dir, name))]
    return ("; ".join(problems), damaged) if problems else None


def checkpoint_problem(path: str) -> str | None:
    """Why the in-job checkpoint at `path` cannot be resumed from (None: it loads)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for truncated or garbled files
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None if isinstance(ckpt, dict) else "not a checkpoint dict"
