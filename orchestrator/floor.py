"""The planner's floor: no level may empty a layer (a weight tensor, or a layer's channels).

A level that empties one trains a network with a layer of zeros (chance accuracy), which no sweep
means to. Layerwise pruning's per-layer counts are known in advance. Global pruning's depend on
the trained weights, so the planner can only require as many survivors as there are layers
(necessary for one per layer).
"""
from __future__ import annotations

from orchestrator.spec import ExperimentSpec, SpecError
from trainers.prune_counts import layer_fraction, prune_count


def check_floor(sizes: dict[str, int], spec: ExperimentSpec, unit: str, layer: str) -> list[int]:
    """Remaining counts of `unit`s (weight, channel) over the `layer`s (`sizes`: layer -> count) at
    levels 0..L; SpecError on pruning.levels at the first level below the floor of one per layer."""
    p = spec.pruning
    counts = dict(sizes)
    floor = len(counts)
    out = [sum(counts.values())]
    for level in range(1, p.levels + 1):
        if p.strategy == "magnitude_layerwise":
            cfg = spec.prune_config()
            counts = {n: c - prune_count(c, layer_fraction(cfg, n)) for n, c in counts.items()}
            empty = [n for n, c in counts.items() if c < 1]
            what = f"leaves no {unit} in {empty[0]}" if empty else ""
        else:
            left = sum(counts.values())
            left -= prune_count(left, p.fraction)
            counts = {"all": left}
            what = f"leaves {left} {unit}{'s' if left != 1 else ''} for {floor} {layer}s" if left < floor else ""
        if what:
            raise SpecError(
                "pruning.levels",
                f"{p.levels} levels of fraction {p.fraction} go below the floor of one {unit} per {layer}: "
                f"level {level} {what}; at most {level - 1} levels",
            )
        out.append(sum(counts.values()))
    return out
