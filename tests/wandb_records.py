"""Read back what a W&B run wrote to its offline `.wandb` file, so tests check the logged
records themselves (a reader of the documented LevelDB-log framing, independent of wandb's own
upload path): history rows, summary, metric definitions, the run record (group, name)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7  # ":W&B" ident, magic 0xBEE1 (little-endian), version 1
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    out, pos, pending = [], HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero fill: the rest of the block is empty
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            pending = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        elif kind == LAST:
            pending += chunk
        rec = pb.Record()
        rec.ParseFromString(pending)
        out.append(rec)
        pending = b""
    return out


def finished_records(path: str | Path, within: float = 60.0) -> list:
    """The records of a run that finished in this process. wandb 0.31's `run.finish()` can return
    before its service has written the run file out (seen in the full suite: a file holding only
    its header right after finish; complete a moment later, and at process exit in any case), so
    read until the exit record is there, for at most `within` seconds."""
    import time

    deadline = time.monotonic() + within
    while True:
        recs = records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in recs) or time.monotonic() > deadline:
            return recs
        time.sleep(0.1)


def run_files(root: str | Path) -> list[Path]:
    return sorted(Path(root).rglob("*.wandb"))


def history(recs) -> list[dict]:
    rows = []
    for r in recs:
        if r.WhichOneof("record_type") == "history":
            row = {}
            for item in r.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows


def summary(recs) -> dict:
    out: dict = {}
    for r in recs:
        if r.WhichOneof("record_type") == "summary":
            for item in r.summary.update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out


def metrics(recs) -> dict[str, str]:
    """{metric name or glob: its step metric} from define_metric records."""
    out = {}
    for r in recs:
        if r.WhichOneof("record_type") == "metric":
            m = r.metric
            out[m.name or m.glob_name] = m.step_metric
    return out


def run_record(recs):
    return next(r.run for r in recs if r.WhichOneof("record_type") == "run")


def config(recs) -> dict:
    out: dict = {}
    for r in recs:
        if r.WhichOneof("record_type") == "config":
            for item in r.config.update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out
