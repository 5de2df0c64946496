"""The config field reference (docs/config-reference.md), generated from the spec's pydantic
models so that it cannot drift from what `lth plan` validates.

    python -m orchestrator.config_reference > docs/config-reference.md   # or: make docs

tests/test_config_reference.py fails when the committed file is stale or a field has no
description.
"""
from __future__ import annotations

import json
import types
from typing import Any, Iterator, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from orchestrator.spec import ExperimentSpec

HEADER = """# Config field reference

Generated from the pydantic models in `orchestrator/spec/` by
`python -m orchestrator.config_reference` (`make docs`); do not edit by hand. `lth schema`
prints the same models as a JSON schema, and `lth plan CONFIG --show-config` prints a config
with every default filled in and every epoch count turned into iterations.

A config is one YAML file. Unknown keys are errors, and values are strict: a string is never
read as a number, nor a float as an integer. `base: other.yaml` (a path relative to the file)
starts from another config: mappings are merged key by key, any other value (a list
included) replaces the base's. `--set KEY=VALUE` overrides any field below by its dotted name.

Units: lengths and points in training are in iterations (SGD steps) unless the field name
says epochs; an `*_epochs` field is resolved into its iteration twin (epochs x
ceil(training examples / batch size), rounded: the last, partial batch of an epoch is a step)
and never reaches the plan. Fractions are in
[0, 1].
"""


def type_text(ann: Any) -> str:
    """A field's annotation as a reader would say it."""
    origin, args = get_origin(ann), get_args(ann)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        parts = [type_text(a) for a in args if a is not type(None)]
        return " \\| ".join(parts) + (" \\| null" if type(None) in args else "")
    if origin is list:
        return f"list of {type_text(args[0])}" if args else "list"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "section"
    return getattr(ann, "__name__", str(ann))


def default_text(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value)}`"


def _section(ann: Any) -> type[BaseModel] | None:
    for t in (ann, *get_args(ann)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def fields(model: type[BaseModel] = ExperimentSpec, prefix: str = "") -> Iterator[tuple[str, Any, type | None]]:
    """(dotted name, FieldInfo, sub-model or None) of every field, depth first."""
    for name, f in model.model_fields.items():
        sub = _section(f.annotation)
        yield prefix + name, f, sub
        if sub is not None:
            yield from fields(sub, f"{prefix}{name}.")


def markdown() -> str:
    lines = [HEADER]
    sections: dict[str, list[str]] = {"": []}
    for dotted, f, sub in fields():
        parent = dotted.rsplit(".", 1)[0] if "." in dotted else ""
        row = (f"| `{dotted}` | {type_text(f.annotation)} | {default_text(f)} | "
               f"{(f.description or '').replace('|', '/')} |")
        sections.setdefault(parent, []).append(row)
        if sub is not None:
            sections.setdefault(dotted, [])
    for name, rows in sections.items():
        lines.append(f"## `{name}`\n" if name else "## Top level\n")
        lines.append("| field | type | default | meaning |")
        lines.append("| --- | --- | --- | --- |")
        lines += rows
        lines.append("")
    return "\n".join(lines)


def json_schema() -> str:
    return json.dumps(ExperimentSpec.model_json_schema(), indent=1)


if __name__ == "__main__":
    print(markdown(), end="")
