"""Planning structured (channel) pruning: the channel density of every level, and the checks
that refuse a config before anything runs (pruning.granularity: channel, train.l1_gamma).

Counts come from the model catalog's channel groups (trainers/model_catalog.py), so `lth plan`
needs no model. A level removes ceil(fraction * remaining channels) globally, or per group with
magnitude_layerwise, exactly as trainers/methods/channels.py does; every group keeps at least
one channel (global: the trainer keeps each group's best channel, so the planner only needs as
many survivors as groups; layerwise: each group's own count must stay >= 1).
"""
from __future__ import annotations

from orchestrator.floor import check_floor
from orchestrator.spec import ExperimentSpec, SpecError
from trainers.model_catalog import channel_groups, has_batchnorm


def check_slimming(spec: ExperimentSpec) -> None:
    info = spec.data_info
    eb = spec.pruning.early_bird
    needs = [("train.l1_gamma", spec.train.l1_gamma > 0),
             ("bn_scale_init", spec.bn_scale_init is not None),
             ("pruning.channel_score", spec.pruning.granularity == "channel" and spec.pruning.channel_score == "bn_gamma"),
             ("pruning.early_bird.kind", eb is not None and eb.kind == "channel")]
    for field, needed in needs:
        if needed and not has_batchnorm(spec.model, tuple(info.input_shape), int(info.num_classes)):
            raise SpecError(field, f"model {spec.model!r} has no BatchNorm scales to initialise, penalise or rank")
    if eb is not None and eb.kind == "channel":
        group_sizes(spec)  # refuses a model without channel groups in pruning.groups' mode


def group_sizes(spec: ExperimentSpec) -> dict[str, int]:
    info = spec.data_info
    p = spec.pruning
    try:
        sizes = channel_groups(spec.model, tuple(info.input_shape), int(info.num_classes), p.groups)
    except ValueError as e:
        raise SpecError("pruning.granularity", f"{spec.model!r} cannot be pruned by channel: {e}") from None
    if p.ignore:
        # a group whose producer filter is ignored is never pruned (trainers/structure.py)
        from fnmatch import fnmatchcase

        sizes = {g: c for g, c in sizes.items() if not any(fnmatchcase(f"{g}.weight", pat) for pat in p.ignore)}
    return sizes


def planned_channel_densities(spec: ExperimentSpec) -> list[float]:
    """Channel density (alive / all channels of the pruned groups) at levels 0..L."""
    check_slimming(spec)
    remaining = check_floor(group_sizes(spec), spec, "channel", "group")
    return [r / remaining[0] for r in remaining]
