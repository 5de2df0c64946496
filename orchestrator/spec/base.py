"""What every section is built from: SpecError (a problem named by its dotted field path), the
strict _Model base, seeds, and the bound and uniqueness helpers the validators share.
"""
from __future__ import annotations

from typing import Annotated, Any, Sequence

from pydantic import BaseModel, ConfigDict, Field

from orchestrator import limits as L


class SpecError(Exception):
    """A bad experiment spec: `field` is the dotted path of what is wrong, `reason` why."""

    def __init__(self, field: str, reason: str, others: Sequence[tuple[str, str]] = ()) -> None:
        self.field = field
        self.reason = reason
        self.others = list(others)  # further (field, reason) problems found at the same time
        super().__init__(str(self))

    def __str__(self) -> str:
        # clip: a message stays readable whatever the input (each value it echoes is cut already)
        lines = [L.clip(f"{self.field}: {self.reason}")]
        lines += [L.clip(f"{f}: {r}") for f, r in self.others[:20]]
        if len(self.others) > 20:
            lines.append(f"... and {len(self.others) - 20} more problems")
        return "\n".join(lines)


# strict: a YAML string is not silently a number, a float not silently an int.
# allow_inf_nan=False: .inf or .nan in a float field is bad input, named like any other.
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _Model(BaseModel):
    model_config = _STRICT


def _at_most(n: float) -> str:
    return f"; at most {n:,}"


# A seed: within int64 (orchestrator/limits.py says why).
Seed = Annotated[int, Field(ge=L.MIN_SEED, le=L.MAX_SEED)]
_SEED_RANGE = "; an integer from -2^63 to 2^63 - 1"


def _at_most_one(model: BaseModel, a: str, b: str, where: str) -> None:
    if getattr(model, a) is not None and getattr(model, b) is not None:
        raise SpecError(f"{where}.{b}", f"give at most one of {where}.{a} and {where}.{b}")


def _unique(values: Sequence[Any], field: str) -> None:
    seen = set()
    for i, v in enumerate(values):
        if v in seen:
            raise SpecError(f"{field}[{i}]", f"{L.echo(v)} appears twice")
        seen.add(v)
