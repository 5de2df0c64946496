"""pydantic's validation errors as SpecError's (field, reason) pairs: dotted paths, valid keys,
'did you mean' suggestions and ranges. The root model is a parameter, so this module needs none.
"""
from __future__ import annotations

import re
from typing import Any, Sequence, get_args

from pydantic import BaseModel, ValidationError

from orchestrator import limits as L


def _path_text(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not re.search(r"[\[\](]", part):  # drop union tags
            out += ("." if out else "") + part
    return out or "<root>"


def _model_at(root: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The spec model class that holds the field at `loc` (for listing valid keys)."""
    cls: Any = root
    for part in loc[:-1]:
        if not isinstance(part, str):
            continue
        sub = _submodel(cls, part)
        if sub is None:
            return None
        cls = sub
    return cls


def _submodel(cls: Any, name: str) -> type[BaseModel] | None:
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or name not in cls.model_fields:
        return None
    ann = cls.model_fields[name].annotation
    for t in (ann, *get_args(ann)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _suggest_key(cls: type[BaseModel], name: object, at: str) -> str:
    """' (did you mean ...?)' for an unknown key `name` in model `cls` (at dotted path `at`): a
    close spelling at this level, else the field of that very name one or two levels down
    (`train.lr` -> `train.optimizer.lr`), else ''."""
    from orchestrator.suggest import did_you_mean

    close = did_you_mean(name, cls.model_fields)
    if close or not isinstance(name, str):
        return close
    below: list[str] = []
    for f in cls.model_fields:
        sub = _submodel(cls, f)
        if sub is None:
            continue
        if name in sub.model_fields:
            below.append(f"{f}.{name}")
        below += [f"{f}.{g}.{name}" for g in sub.model_fields if name in getattr(_submodel(sub, g), "model_fields", {})]
    if not below:
        return ""
    return f" (did you mean {' or '.join(repr(f'{at}.{b}' if at else b) for b in below[:3])}?)"


def _errors(e: ValidationError, root: type[BaseModel]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in e.errors():
        loc = err["loc"]
        field = _path_text(loc)
        if err["type"] == "extra_forbidden":
            holder = _model_at(root, loc)
            valid = f" (valid keys: {', '.join(holder.model_fields)})" if holder else ""
            reason = f"unknown key{_suggest_key(holder, loc[-1], _path_text(loc[:-1]) if loc[:-1] else '') if holder else ''}{valid}"
        elif err["type"] == "missing":
            reason = "required field is missing"
        else:
            reason = f"{err['msg']} (got {L.echo(err.get('input'))})"
            if err["type"].startswith(("int_", "float_")):  # the wrong type: say the range too
                reason += _bound_of(root, loc)
            if isinstance(err.get("input"), list) and "list" not in err["type"]:
                # A list where one value goes: someone trying to sweep a hyperparameter.
                reason += ("; a field takes one value per experiment: to compare values, run one "
                           "experiment per value (README: 'A hyperparameter axis')")
        if (field, reason) not in out:
            out.append((field, reason))
    return out


def _bound_of(root: type[BaseModel], loc: Sequence[Any]) -> str:
    """"; at most N" for a bounded integer field (the bound is in its description), so that a
    value refused for its type (1e18 is a float) still learns the range it must be in."""
    holder, name = _model_at(root, loc), loc[-1] if loc else None
    if holder is None or not isinstance(name, str) or name not in holder.model_fields:
        return ""
    at_most = re.search(r"; at most [0-9,.]+( [a-z]+)?", holder.model_fields[name].description or "")
    return at_most.group(0) if at_most else ""
