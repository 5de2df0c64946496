"""Experiment identity: an experiment is its name plus its resolved config (DESIGN.md).

`lth run` compares the config it was given with the one stored under the experiment's name
before it writes anything (`check_against_store`):

- no experiment of that name yet: a new experiment;
- every job the stored plan holds is still planned: the same experiment, possibly grown
  (more levels, rewinding points, branch seeds, replicates, retrain modes or controls);
- some planned job is gone (a hyperparameter changed, or work was taken away): refused, with
  every changed field named, old value and new value. Start over in a fresh store, or fork
  under a new name (`--set name=...`): equal work keeps equal job ids, so a fork reuses every
  job it shares with the original.

`config_hash` identifies the resolved config in every Parquet row. It covers the fields that
decide what the jobs compute; where and how they run (resources, scheduler, tracking, store)
is left out, so a run with more workers is still the same config, and so is the name (the
partition already says which experiment a row belongs to; a fork of an equal config under
another name has equal rows).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import yaml

from orchestrator.jobid import canonical_json
from orchestrator.spec import ExperimentSpec, SpecError

# Top-level sections that change how jobs run, never what they compute.
RUNTIME_SECTIONS = ("resources", "scheduler", "tracking", "store")
HASH_LENGTH = 16

# Fields along which an experiment may grow: the new value must contain the old one.
_GROWS_AS_SET = {
    "sweep.init_seeds",
    "sweep.rewind_iters",
    "sweep.branch.seeds",
    "sweep.branch.levels",
    "pruning.retrain",
    "pruning.controls",
    "pruning.at_init.methods",
    "pruning.at_init.at_iters",
    "pruning.at_init.ablations",
    "transfer.levels",
    "transfer.controls",
}
_GROWS_AS_NUMBER = {"pruning.levels"}
# Fields added after experiments were stored: left out of the identity while at their default,
# so that an existing config keeps its config_hash.
_NEW_AT_DEFAULT = {
    "train": {"bn_sync": "global", "bn_batch": None, "l1_gamma": 0.0},
    "pruning": {"criterion": "magnitude", "at_init": None, "granularity": "weight", "channel_score": "l1_filter",
                "groups": "block_internal", "early_bird": None, "layer_fractions": {}},
    "": {"transfer": None},  # top-level sections
}


def identity_config(spec: ExperimentSpec) -> dict[str, Any]:
    """The resolved config minus its name and the runtime sections, as plain JSON data."""
    data = spec.model_dump(mode="json")
    data.pop("name", None)
    for section in RUNTIME_SECTIONS:
        data.pop(section, None)
    for section, defaults in _NEW_AT_DEFAULT.items():
        for key, default in defaults.items():
            where = data if section == "" else data.get(section, {})
            if key in where and where[key] == default:
                del where[key]
    return data


def config_hash(spec: ExperimentSpec) -> str:
    return hashlib.sha256(canonical_json(identity_config(spec)).encode()).hexdigest()[:HASH_LENGTH]


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _grows(field: str, old: Any, new: Any) -> bool:
    if field in _GROWS_AS_NUMBER:
        return isinstance(old, int) and isinstance(new, int) and new >= old
    if field in _GROWS_AS_SET:
        if new == "all":  # sweep.branch.levels: every level contains any list of levels
            return old == "all" or isinstance(old, list)
        return isinstance(old, list) and isinstance(new, list) and set(old) <= set(new)
    return False


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted field, old value, new value) of every identity field that differs and is not
    growth. Runtime sections are ignored."""
    a, b = _flatten(old), _flatten(new)
    out = []
    for field in sorted(set(a) | set(b)):
        if field.split(".", 1)[0] in RUNTIME_SECTIONS:
            continue
        va, vb = a.get(field), b.get(field)
        if va != vb and not _grows(field, va, vb):
            out.append((field, va, vb))
    return out


@dataclass(frozen=True)
class Verdict:
    status: str  # "new" | "same" | "grows"
    added_jobs: int = 0

    def message(self, name: str) -> str:
        if self.status == "new":
            return f"experiment {name}: new"
        if self.status == "same":
            return f"experiment {name}: same config as stored, nothing new planned"
        return f"experiment {name}: grows by {self.added_jobs} planned jobs (the stored ones are kept)"


def check_against_store(store, spec: ExperimentSpec, planned_ids: set[str]) -> Verdict:
    """Compare `spec` (whose plan holds `planned_ids`) with the experiment stored under its
    name. Reads only. Raises SpecError (the CLI's exit 2) when a planned job would change."""
    name = spec.name
    spec_rel, jobs_rel = f"experiments/{name}/spec.yaml", f"experiments/{name}/jobs.json"
    if not store.exists(jobs_rel):
        return Verdict("new")
    old_ids = set(store.read_json(jobs_rel))
    gone = old_ids - planned_ids
    if not gone:
        added = len(planned_ids - old_ids)
        return Verdict("grows" if added else "same", added)
    old_config = (yaml.safe_load(store.read_bytes(spec_rel)) if store.exists(spec_rel) else None) or {}
    for key in ("name", *RUNTIME_SECTIONS):  # what identity_config leaves out: never a "change"
        old_config.pop(key, None)
    changes = changed_fields(old_config, identity_config(spec))
    how = (
        "to keep the stored results, run the stored config again (or one that only adds work); "
        f"to change it, fork under a new name (--set name={name}-2; jobs equal to stored ones are reused) "
        "or start over with a fresh --store"
    )
    head = f"experiment {name!r} already exists with another config: {len(gone)} of its {len(old_ids)} planned jobs would change"
    if not changes:
        reason = (
            f"{head}, although no config field differs (this version of lth-sweep describes the jobs "
            f"differently, e.g. a model changed); {how}"
        )
        raise SpecError("name", reason)
    first, *rest = changes
    def line(c: tuple[str, Any, Any]) -> tuple[str, str]:
        return c[0], f"changed from {c[1]!r} to {c[2]!r}"
    field, reason = line(first)
    others = [line(c) for c in rest] + [("name", f"{head}; {how}")]
    raise SpecError(field, reason, others)
