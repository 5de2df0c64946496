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
import typing
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from orchestrator.jobid import canonical_json
from orchestrator.spec import ExperimentSpec, SpecError, final_lr

# Top-level sections that change how jobs run, never what they compute.
# `references` (published results for the report) changes nothing either.
RUNTIME_SECTIONS = ("resources", "scheduler", "tracking", "store", "references")
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
# Fields added after experiments were stored (dotted paths): left out of the identity while at
# their default, so that an existing config keeps its config_hash.
_NEW_AT_DEFAULT = {
    "bn_scale_init": None,
    "transfer": None,
    "train.bn_sync": "global", "train.bn_batch": None, "train.l1_gamma": 0.0,
    "pruning.criterion": "magnitude", "pruning.at_init": None, "pruning.granularity": "weight",
    "pruning.channel_score": "l1_filter", "pruning.groups": "block_internal", "pruning.early_bird": None,
    "pruning.hrank": {"batches": 5, "batch_size": 128},
    "pruning.at_init.scoring.sample": "class_balanced",
    "pruning.layer_fractions": {},
}


def identity_config(spec: ExperimentSpec) -> dict[str, Any]:
    """The resolved config minus its name and the runtime sections, as plain JSON data."""
    data = spec.model_dump(mode="json")
    data.pop("name", None)
    for section in RUNTIME_SECTIONS:
        data.pop(section, None)
    for path, default in _NEW_AT_DEFAULT.items():
        *parents, key = path.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and key in node and node[key] == default:
            del node[key]
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


_NO_DEFAULT = object()


def _field_default(field: str) -> Any:
    """The default of a dotted ExperimentSpec field as stored (JSON data), or _NO_DEFAULT when
    the path names no field or the field has none."""
    model: type[BaseModel] | None = ExperimentSpec
    *parents, leaf = field.split(".")
    for part in parents:
        info = model.model_fields.get(part) if model is not None else None
        if info is None:
            return _NO_DEFAULT
        kinds = [info.annotation, *typing.get_args(info.annotation)]  # X, or X | None
        model = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
    info = model.model_fields.get(leaf) if model is not None else None
    if info is None or info.is_required():
        return _NO_DEFAULT
    value = info.get_default(call_default_factory=True)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted field, old value, new value) of every identity field whose effective value
    differs and is not growth. Runtime sections are ignored. A field one side lacks (a config
    stored before the field existed, or an identity config that leaves a field at its default
    out) has its default as effective value: comparing a default with an absent value is no change."""
    a, b = _flatten(old), _flatten(new)
    out = []
    for field in sorted(set(a) | set(b)):
        if field.split(".", 1)[0] in RUNTIME_SECTIONS:
            continue
        default = _field_default(field)
        va = a.get(field, None if default is _NO_DEFAULT else default)
        vb = b.get(field, None if default is _NO_DEFAULT else default)
        if va != vb and not _grows(field, va, vb):
            out.append((field, va, vb))
    return out


# Resolved fields whose value follows others unless set: (field, what it follows, its resolver).
_DERIVED = {"pruning.finetune_lr": ("the final learning rate of training", lambda spec: final_lr(spec))}


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
    # A derived field that moved with what it follows is shown as such, after the changes the
    # user made, not as a second change of its own.
    own, derived = [], []
    for field, va, vb in changes:
        follows = _DERIVED.get(field)
        if follows is not None and vb == follows[1](spec):
            derived.append((field, f"follows {follows[0]}: {va!r} before, {vb!r} now (derived, not a change of its own)"))
        else:
            own.append((field, f"changed from {va!r} to {vb!r}"))
    (field, reason), *others = own + derived
    raise SpecError(field, reason, [*others, ("name", f"{head}; {how}")])
