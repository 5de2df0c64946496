"""`--set a.b.c=VALUE` overrides, applied to the raw config and checked against the spec's schema.
"""
from __future__ import annotations

import re
from typing import Any

import yaml

from orchestrator import limits as L
from orchestrator.spec.base import SpecError
from orchestrator.spec.errors import _path_text, _submodel, _suggest_key
from orchestrator.spec.experiment import ExperimentSpec, TransferSpec
from orchestrator.spec.yaml_reader import parse_yaml


_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")


def _parse_key(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for token in key.split("."):
        m = _TOKEN.match(token)
        if not m:
            raise SpecError(key, f"--set: {L.echo(token)} is not a config key (keys look like a.b.c or a.b[1])")
        parts.append(m.group(1))
        parts += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
    return parts


def apply_override(data: dict, override: str) -> None:
    """Apply one `a.b.c=VALUE` (VALUE parsed as YAML) to the raw spec dict, in place.

    The path is checked against the spec's schema, so `--set` can set a key the file leaves
    out (its default), but a misspelt key is an error rather than a silently ignored value.
    """
    if "=" not in override:
        raise SpecError(override, "--set expects KEY=VALUE, e.g. --set train.optimizer.lr=0.05")
    key, text = override.split("=", 1)
    key = key.strip()
    try:
        value = parse_yaml(text)
    except yaml.YAMLError as e:
        raise SpecError(key, f"--set: the value {L.echo(text)} is not valid YAML ({e})") from None
    parts = _parse_key(key)
    node: Any = data
    cls: Any = ExperimentSpec
    done: list[str | int] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = _path_text(done) if done else "the top level"
        if isinstance(part, str):
            if cls is None or not isinstance(node, dict):
                raise SpecError(key, f"--set: {_path_text(done)} has no sub-keys")
            if part not in cls.model_fields:
                raise SpecError(key, f"--set: unknown key {L.echo(part)} at {where}{_suggest_key(cls, part, _path_text(done) if done else '')} "
                                     f"(valid keys: {', '.join(cls.model_fields)})")
            # transfer.source holds a whole experiment config: its keys are checked as one
            sub = ExperimentSpec if (cls, part) == (TransferSpec, "source") else _submodel(cls, part)
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    if sub is None:
                        raise SpecError(key, f"--set: {_path_text(done + [part])} is not set in the file, cannot index it")
                    node[part] = {}
                node = node[part]
            cls = sub
        else:
            if not isinstance(node, list) or not 0 <= part < len(node):
                size = f"a list of {len(node)}" if isinstance(node, list) else "not a list"
                raise SpecError(key, f"--set: index [{part}] is out of range ({_path_text(done)} is {size})")
            if last:
                node[part] = value
            else:
                node = node[part]
            cls = None
        done.append(part)
