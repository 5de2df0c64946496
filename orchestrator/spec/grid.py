"""Grids: a config's `grid:` block expanded into one raw config per point of a product of values.
"""
from __future__ import annotations

import re
from typing import Any

from orchestrator import limits as L
from orchestrator.spec.base import SpecError
from orchestrator.spec.overrides import apply_override


MAX_GRID_POINTS = 64
# The lottery-ticket axes are the sweep's own (an experiment grows along them); the rest say
# where and how jobs run, or are the experiment's identity: none of them is a grid axis.
GRID_REFUSED = ("name", "base", "grid", "references", "sweep", "pruning.levels", "pruning.retrain",
                "pruning.controls", "pruning.at_init", "pruning.early_bird", "resources", "scheduler",
                "tracking", "store")
_GRID_VALUE = re.compile(r"^[A-Za-z0-9_.-]+$")


def _grid_value_text(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else (repr(v) if isinstance(v, float) else str(v))


def expand_grid(data: dict) -> list[dict]:
    """A raw config with a `grid:` block (dotted field -> list of values) -> one raw config per
    point of the product, named `<name>-<field><value>...` by the last word of each field
    (`demo_lr-lr0.05`), in the order the block lists fields and values; without a grid, [data]."""
    import copy
    import itertools
    import json

    if "grid" not in data:
        return [data]
    grid = data.pop("grid")
    if not isinstance(grid, dict) or not grid:
        raise SpecError("grid", f"a mapping of dotted fields to lists of values, e.g. grid: {{train.optimizer.lr: "
                                f"[0.1, 0.05]}} (got {L.echo(grid)})")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError("name", "a grid needs the base name its experiments are named after")
    axes = []
    for key, values in grid.items():
        where = f"grid.{key}"
        if not isinstance(key, str) or any(key == r or key.startswith(r + ".") for r in GRID_REFUSED):
            raise SpecError(where, "not a grid axis: the lottery-ticket axes (sweep, pruning levels, retrain modes, "
                                   "controls, pruning at init) grow one experiment, and name, references and the "
                                   "runtime sections change nothing computed")
        if not isinstance(values, list) or not values:
            raise SpecError(where, f"a non-empty list of values (got {L.echo(values)})")
        texts = []
        for v in values:
            if isinstance(v, (dict, list)) or v is None:
                raise SpecError(where, f"each value is one number, string or boolean (got {L.echo(v)})")
            t = _grid_value_text(v)
            if not _GRID_VALUE.match(t):
                raise SpecError(where, f"the value {L.echo(v)} cannot be part of an experiment name (letters, "
                                       "digits, _ . - only)")
            texts.append(t)
        if len(set(texts)) != len(texts):
            raise SpecError(where, f"a value is listed twice ({', '.join(texts)})")
        axes.append((key, values))
    n = 1
    for _, values in axes:
        n *= len(values)
    if n > MAX_GRID_POINTS:
        raise SpecError("grid", f"{n} points; at most {MAX_GRID_POINTS} experiments per grid")
    words = [key.rsplit(".", 1)[-1] for key, _ in axes]
    out = []
    for point in itertools.product(*(values for _, values in axes)):
        d = copy.deepcopy(data)
        for (key, _), v in zip(axes, point):
            try:
                apply_override(d, f"{key}={json.dumps(v)}")
            except SpecError as e:
                raise SpecError(f"grid.{key}", e.reason.removeprefix("--set: ")) from None
        d["name"] = name + "".join(f"-{w}{_grid_value_text(v)}" for w, v in zip(words, point))
        out.append(d)
    return out
