"""Job ids: the one place they are made.

id = sha256 of the canonical JSON of [kind, the job description as plain data, the inputs
{role: [parent id, file]}] (sorted keys, no whitespace, floats by repr, tuples as lists),
first `ID_LENGTH` hex digits. The description is `dataclasses.asdict(spec)` with one
exception: a train job's `save_iters` (which W_k snapshots the dense run also writes) is left
out, because it does not change any weight the job produces, and leaving it in would give
the dense run a new id, and so every job below it, whenever a rewinding point is added to a
sweep. So is `channel_report` (the groups an early-bird retrain counts its channel density over:
a measure, not a weight). The consequence for the scheduler: a done dense run may lack a `w_<k>.pt` that a newly
added `k` needs (`orchestrator.planner.required_outputs` lists what each job must hold).

Nothing else that does not change the output (experiment name, paths, checkpoint frequency,
resources) is part of a job description, so none of it reaches the id.

Two fields reach the id on purpose: `train.deterministic` (non-deterministic kernels give other
weights on a GPU) and a train job's `noise_replica`, which changes nothing the job computes but
keeps apart the two otherwise identical runs of a noise-floor pair (sweep.branch.noise_floor),
whose difference is the point of running them.

Fields added to a description after jobs were stored are left out while they hold their
default (`_OMITTED_AT_DEFAULT`): a job that does not use them keeps the id it always had, and a
job that does (BatchNorm per replica on N ranks, pruning at initialization, a mask criterion,
a sign-keeping reinit) gets its own.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from json.encoder import encode_basestring_ascii
from typing import Any, Mapping

from trainers.jobs import AtInitConfig, PruneConfig, TrainConfig, TrainJob

ID_LENGTH = 20  # 80 bits: no collision in any sweep a cluster can run

# Fields of a job description that are not part of its identity (see the module docstring).
# channel_report: which channel groups a job's channel_density is counted over (a measure, no weight).
_EXCLUDED = {TrainJob: frozenset({"save_iters", "channel_report"})}
# Fields left out while they equal their default (see the module docstring).
_OMITTED_AT_DEFAULT = {
    TrainConfig: {"bn_sync": "global", "bn_batch": None, "l1_gamma": 0.0, "bn_scale_init": None},
    TrainJob: {"at_init": None, "reinit_keep_signs": False, "early_bird": None, "start_at_detection": False,
               "transfer": None},  # ticket transfer (issue 28): its inputs are the source jobs' ids
    # structured pruning (issue 20) and Zhou et al.'s criterion (issue 23): at these defaults,
    # magnitude pruning of weights as before; per-layer rates and HRank's batches (issue 28)
    PruneConfig: {"criterion": "magnitude", "granularity": "weight", "channel_score": "l1_filter",
                  "groups": "block_internal", "rank_batches": 5, "rank_batch_size": 128, "layer_fractions": ()},
    # issue 27: Synaptic-Flow's random scoring sample (class_balanced: as before)
    AtInitConfig: {"sample": "class_balanced"},
}


def _omitted(obj: Any, name: str) -> bool:
    defaults = _OMITTED_AT_DEFAULT.get(type(obj))
    return defaults is not None and name in defaults and getattr(obj, name) == defaults[name]


def _plain(obj: Any) -> Any:
    """dataclasses.asdict (minus the excluded fields), tuples as lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        skip = _EXCLUDED.get(type(obj), ())
        return {
            f.name: _plain(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if f.name not in skip and not _omitted(obj, f.name)
        }
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"job descriptions hold plain data only; got {type(obj).__name__}: {obj!r}")


def canonical_json(obj: Any) -> str:
    # json writes floats with float.__repr__ (shortest round-trip), tuples as lists.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


_json_str = encode_basestring_ascii  # what json.dumps(ensure_ascii=True) writes for a str


def _scalar(v: Any) -> str | None:
    """canonical_json(v) for the scalars job descriptions are made of (None for anything else)."""
    t = type(v)
    if t is str:
        return _json_str(v)
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return int.__repr__(v)
    if t is float and math.isfinite(v):
        return float.__repr__(v)  # what json writes for a finite float
    if v is None:
        return "null"
    return None  # nan/inf (json raises, allow_nan=False), containers, dataclasses, subclasses


class _Encoder:
    """canonical_json(_plain(obj)), with the text of nested dataclasses memoised by identity:
    one TrainConfig object serves every job of a plan, so it is encoded once, not 100,000
    times; scalars and each dataclass type's sorted field names are written without a
    json.dumps call each. Equal output to the plain path is a test (tests/test_planner.py)."""

    def __init__(self, max_size: int = 1024) -> None:
        # id(obj) -> (obj, text): holding obj keeps its id from being reused while cached.
        self._memo: dict[int, tuple[Any, str]] = {}
        self._max_size = max_size
        self._fields: dict[type, list[tuple[str, str]]] = {}  # type -> [(field, its JSON key)], sorted

    def _field_keys(self, cls: type) -> list[tuple[str, str]]:
        keys = self._fields.get(cls)
        if keys is None:
            skip = _EXCLUDED.get(cls, ())
            names = sorted(f.name for f in dataclasses.fields(cls) if f.name not in skip)
            keys = self._fields[cls] = [(n, json.dumps(n) + ":") for n in names]
        return keys

    def __call__(self, obj: Any, memo: bool = True) -> str:
        text = _scalar(obj)
        if text is not None:
            return text
        if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
            return canonical_json(_plain(obj))
        hit = self._memo.get(id(obj)) if memo else None
        if hit is not None and hit[0] is obj:
            return hit[1]
        text = "{" + ",".join(
            key + self(getattr(obj, n)) for n, key in self._field_keys(type(obj)) if not _omitted(obj, n)
        ) + "}"
        if memo:
            if len(self._memo) >= self._max_size:
                self._memo.clear()
            self._memo[id(obj)] = (obj, text)
        return text


_encode = _Encoder()


def job_id(kind: str, spec: Any, inputs: Mapping[str, tuple[str, str]]) -> str:
    """The id of the job of `kind` described by `spec` (a trainers.jobs dataclass), consuming
    `inputs` (role -> (parent job id, artifact file name))."""
    return hashlib.sha256(job_payload(kind, spec, inputs).encode("ascii")).hexdigest()[:ID_LENGTH]


def job_payload(kind: str, spec: Any, inputs: Mapping[str, tuple[str, str]]) -> str:
    """The exact text `job_id` hashes: canonical_json([kind, plain spec, inputs])."""
    ins = "{" + ",".join(
        f"{_json_str(str(r))}:[{_json_str(str(p))},{_json_str(str(f))}]" for r, (p, f) in sorted(inputs.items())
    ) + "}"  # canonical_json({role: [parent, file]}), written directly: one per job of a 100k-job plan
    # A train job's own description is unique to it: memoising it would only evict the shared parts.
    return f"[{json.dumps(str(kind))},{_encode(spec, memo=not isinstance(spec, TrainJob))},{ins}]"


def derived_seed(tag: str, *values: int) -> int:
    """A seed for a control's random draw, a pure function of (tag, values)."""
    text = ":".join([tag, *(str(int(v)) for v in values)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF
