"""The counting half of pruning, without tensors or torch: which of a model's Conv/Linear weights
are prunable once the `ignore` patterns are applied, how many weights one step removes, and the
remaining counts at every level. The planner uses these with the catalog's sizes
(model_catalog.py); pruning.py uses the same functions on real masks, so the two cannot differ.
"""
from __future__ import annotations

import fnmatch
import math
from fractions import Fraction
from typing import Iterable, Mapping, Sequence

from trainers.jobs import PruneConfig

STRATEGIES = ("magnitude_global", "magnitude_layerwise", "random")


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"prune strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")


# ---- which tensors -------------------------------------------------------------------------


def _some(names: Sequence[str]) -> str:
    return ", ".join(names) if len(names) <= 5 else f"{', '.join(names[:3])} ... {', '.join(names[-2:])}"


def select_prunable(candidates: Sequence[str], ignore: Iterable[str] = ()) -> list[str]:
    """The Conv/Linear weight names `candidates` (state_dict order) minus `ignore` (fnmatch patterns).

    A pattern that matches no Conv/Linear weight is almost surely a typo that would silently
    change the experiment, so it is an error.
    """
    ignore = tuple(ignore)
    ordered = list(candidates)
    for pattern in ignore:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in ordered):
            raise ValueError(
                f"prune ignore pattern {pattern!r} matches no Conv/Linear weight of the model; "
                f"prunable weights are {_some(ordered)}"
            )
    return [n for n in ordered if not any(fnmatch.fnmatchcase(n, p) for p in ignore)]


# ---- how many ------------------------------------------------------------------------------


def check_fraction(fraction: float) -> Fraction:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction):
        raise ValueError(f"prune fraction must be a number in (0, 1), got {fraction!r}")
    if not 0 < fraction < 1:
        raise ValueError(f"prune fraction must be in (0, 1) (exclusive), got {fraction!r}")
    # The decimal the user wrote, exactly: with floats, ceil(0.07 * 100) would be 8, not 7.
    return Fraction(repr(float(fraction)))


def prune_count(remaining: int, fraction: float) -> int:
    """ceil(fraction * remaining), computed exactly."""
    return math.ceil(check_fraction(fraction) * int(remaining))


def layer_fraction(cfg: PruneConfig, name: str) -> float:
    """The fraction a layerwise level removes from tensor `name`: the first of
    cfg.layer_fractions whose pattern matches it, else cfg.fraction."""
    return next((f for pattern, f in cfg.layer_fractions if fnmatch.fnmatchcase(name, pattern)), cfg.fraction)


def planned_remaining(sizes: Mapping[str, int], cfg: PruneConfig, levels: int) -> list[int]:
    """Remaining prunable weights at levels 0..levels (dense first), with no tensor at all.

    Equals what repeated `prune` calls produce from a full mask: global removes ceil(p * r) of
    the total; layerwise removes ceil(p * r_i) from each tensor. (The random control keeps the
    magnitude strategy's counts: `shuffle_within_layers`.)
    """
    check_strategy(cfg.strategy)
    if cfg.strategy == "random":
        raise ValueError("planned_remaining: the random control has the counts of the magnitude strategy it shuffles")
    check_fraction(cfg.fraction)
    if int(levels) < 0:
        raise ValueError(f"levels must be >= 0, got {levels!r}")
    counts = [int(s) for s in sizes.values()]
    if any(c < 0 for c in counts):
        raise ValueError(f"sizes must be non-negative, got {dict(sizes)!r}")
    rates = [layer_fraction(cfg, n) for n in sizes]
    out = [sum(counts)]
    for _ in range(int(levels)):
        if cfg.strategy == "magnitude_layerwise":
            counts = [c - prune_count(c, f) for c, f in zip(counts, rates)]
            out.append(sum(counts))
        else:
            out.append(out[-1] - prune_count(out[-1], cfg.fraction))
    return out


def planned_densities(sizes: Mapping[str, int], cfg: PruneConfig, levels: int) -> list[float]:
    total = sum(int(s) for s in sizes.values())
    if total == 0:
        raise ValueError("sizes: no prunable weights")
    return [r / total for r in planned_remaining(sizes, cfg, levels)]



# ---- pruning at initialization: names and counts, without torch ----------------------------

AT_INIT_METHODS = ("snip", "grasp", "grasp_abs", "synflow", "magnitude_init", "random_init")
DATA_METHODS = frozenset({"snip", "grasp", "grasp_abs"})  # score on a batch of training data


def planned_layer_remaining(sizes: Mapping[str, int], fraction: float, level: int) -> list[int]:
    """Per-tensor remaining counts (sizes' order) after `level` layerwise steps: what
    magnitude_layerwise leaves in each tensor, and what layerwise pruning at init keeps."""
    counts = [int(s) for s in sizes.values()]
    for _ in range(int(level)):
        counts = [c - prune_count(c, fraction) for c in counts]
    return counts
