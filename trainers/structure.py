"""Channels of a network, for structured (channel) pruning: which channels can be pruned together,
and what a pruned channel zeroes.

A *channel group* is a set of channels pruned as one unit: channel c of the group is the output
channel c of every producer convolution in it (the filter, its bias), of the BatchNorm layers
that normalise those outputs (scale AND shift: with a shift left alive the channel still
outputs the constant ReLU(beta)), and the input slice c of every consumer (the next
convolution's in-channel c, or the k inputs of a Linear layer that a flatten makes of it).

Two modes (pruning.groups):
- `block_internal`: channels that reach their consumers through BatchNorm, ReLU and pooling
  only, each the outputs of one convolution: every channel of a plain (VGG) network, the
  channels inside residual blocks (Li et al. 2017; network slimming). Found by following the
  model's torch.fx graph from each convolution (`_internal_groups`); plain torch.
- `coupled`: those, plus the channels that meet at a residual add, one group per stage (the
  stem or the stage's first projection and every block's last convolution). These are found
  by Torch-Pruning's dependency graph (imported only here, only for this mode), not by a
  tracer of our own: the add, the projection shortcut and torchvision's in-place `+=` are
  exactly what it is built to follow.

A structured mask is an ordinary `{parameter_name: bool tensor}` mask (pruning.Mask) that also
covers biases, BatchNorm parameters and consumers' input slices (`expand`); `alive_channels`
reads the channel flags back from it (from the first producer's filters), so a mask file is
the whole state of a structured lineage.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainers.prune_counts import select_prunable

GROUP_MODES = ("block_internal", "coupled")
Channels = dict[str, torch.Tensor]  # group name -> bool[C] (True: alive)


@dataclass(frozen=True)
class ChannelGroup:
    name: str  # module name of the first producer convolution (model order)
    size: int  # channels C
    convs: tuple[str, ...]  # producer Conv2d module names: their output channel c
    norms: tuple[str, ...]  # BatchNorm2d module names: their channel c
    consumers: tuple[tuple[str, int], ...]  # (Conv2d/Linear module name, inputs per channel)


# Modules and functions a channel passes through unchanged in index (and that keep a zero
# channel zero): what separates a producer from its consumers in a block-internal group.
_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Flatten)
_PASS_FUNCTIONS = {F.relu, torch.relu, torch.flatten, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.dropout}
_PASS_METHODS = {"relu", "relu_", "flatten"}


def channel_groups(model: nn.Module, mode: str, ignore: Iterable[str] = (),
                   input_shape: tuple[int, ...] | None = None) -> list[ChannelGroup]:
    """The channel groups of `model`, in the model order of their first producer. A group one of
    whose producer filters is matched by `ignore` (pruning.ignore, fnmatch on weight names) is
    left out: its channels are never pruned. `input_shape` (coupled mode: the dependency graph
    runs the model once) defaults to the model's own image shape or 3x64x64; a `meta` model
    works."""
    if mode not in GROUP_MODES:
        raise ValueError(f"pruning.groups must be one of {', '.join(GROUP_MODES)}, got {mode!r}")
    groups = _internal_groups(model)
    if mode == "coupled":
        groups = _with_coupled_groups(model, groups, input_shape)
    ignore = tuple(ignore)
    if ignore:
        from trainers.pruning import candidate_names

        kept = set(select_prunable(candidate_names(model), ignore))  # also refuses a pattern matching nothing
        groups = [g for g in groups if all(f"{c}.weight" in kept for c in g.convs)]
    if not groups:
        raise ValueError(
            f"pruning.granularity: model {type(model).__name__} has no prunable channel group in mode {mode!r} "
            "(channel pruning needs Conv2d layers whose outputs feed Conv2d or Linear layers)"
        )
    return groups


def _internal_groups(model: nn.Module) -> list[ChannelGroup]:
    graph = torch.fx.symbolic_trace(model).graph
    mods = dict(model.named_modules())
    out = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(mods[node.target], nn.Conv2d):
            continue
        conv = mods[node.target]
        if conv.groups != 1:
            continue
        group = _follow(node, conv.out_channels, mods)
        if group is not None:
            out.append(ChannelGroup(node.target, conv.out_channels, (node.target,), *group))
    return out


def _follow(start: torch.fx.Node, size: int, mods: Mapping[str, nn.Module]):
    """(norms, consumers) reached from a convolution's output through pass-through operations
    only, or None where anything else (an add, a concatenation, the output) uses a channel."""
    norms: list[str] = []
    consumers: list[tuple[str, int]] = []
    frontier, seen = list(start.users), set()
    while frontier:
        node = frontier.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module":
            m = mods[node.target]
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.num_features == size:  # SyncBatchNorm too
                norms.append(node.target)
            elif isinstance(m, nn.Conv2d):
                if m.groups != 1 or m.in_channels != size:
                    return None
                consumers.append((node.target, 1))
                continue
            elif isinstance(m, nn.Linear):
                if m.in_features % size:
                    return None
                consumers.append((node.target, m.in_features // size))  # NCHW flatten: channel-major
                continue
            elif not isinstance(m, _PASS_MODULES):
                return None
        elif node.op == "call_function":
            if node.target not in _PASS_FUNCTIONS:
                return None
        elif node.op == "call_method":
            if node.target not in _PASS_METHODS:
                return None
        else:
            return None
        frontier.extend(node.users)
    if not consumers:
        return None
    return tuple(sorted(set(norms))), tuple(sorted(set(consumers)))


def _with_coupled_groups(model: nn.Module, internal: list[ChannelGroup],
                         input_shape: tuple[int, ...] | None) -> list[ChannelGroup]:
    """`internal` plus Torch-Pruning's groups of the convolutions it does not cover."""
    try:
        import torch_pruning as tp
    except ImportError:
        raise ValueError(
            "pruning.groups: coupled needs the torch-pruning package (pip install torch-pruning); "
            "block_internal does not"
        ) from None
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    covered = {c for g in internal for c in g.convs}
    device = next(model.parameters()).device
    example = torch.zeros(1, *(input_shape or _input_shape(model)), device=device)
    was_training = model.training
    dg = tp.DependencyGraph().build_dependency(model.eval(), example_inputs=example)
    model.train(was_training)
    groups = list(internal)
    for name, conv in model.named_modules():
        if not isinstance(conv, nn.Conv2d) or name in covered or conv.groups != 1:
            continue
        size = conv.out_channels
        found = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(size)))
        convs, norms, consumers = [], [], []
        for item in found:
            mod, handler = item.dep.target.module, item.dep.handler
            idxs = [int(i) for i in item.idxs]
            target = names.get(mod)
            out_side = handler in (tp.prune_conv_out_channels, tp.prune_batchnorm_out_channels)
            if isinstance(mod, nn.Conv2d) and handler == tp.prune_conv_out_channels:
                convs.append(target)
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm) and out_side:
                norms.append(target)
            elif isinstance(mod, (nn.Conv2d, nn.Linear)) and handler in (tp.prune_conv_in_channels, tp.prune_linear_in_channels):
                if len(idxs) % size:
                    raise ValueError(f"pruning.groups: coupled group of {name} reaches {target} with {len(idxs)} inputs")
                consumers.append((target, len(idxs) // size))
            else:
                continue
            if sorted(idxs) != list(range(len(idxs))):
                raise ValueError(
                    f"pruning.groups: the coupled group of {name} maps channels to other indices in {target} "
                    "(a concatenation or split); only index-preserving couplings (residual adds) are supported"
                )
        if any(c in covered or modules[c].groups != 1 for c in convs):
            raise ValueError(f"pruning.groups: the coupled group of {name} overlaps a block-internal group")
        convs = sorted(set(convs), key=_order(model))
        groups.append(ChannelGroup(convs[0], size, tuple(convs), tuple(sorted(set(norms))), tuple(sorted(set(consumers)))))
        covered.update(convs)
    return sorted(groups, key=lambda g: _order(model)(g.name))


def _order(model: nn.Module):
    index = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return lambda name: index[name]


def _input_shape(model: nn.Module) -> tuple[int, ...]:
    """An input shape the model takes, for tracing: its recorded image shape, else 3x64x64."""
    shape = getattr(model, "image_shape", None)
    if shape is not None:
        return tuple(shape)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return (first.in_channels, 64, 64)


# ---- channel flags <-> parameter masks ---------------------------------------------------


def all_alive(groups: list[ChannelGroup]) -> Channels:
    return {g.name: torch.ones(g.size, dtype=torch.bool) for g in groups}


def expand(groups: list[ChannelGroup], alive: Channels, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The parameter mask of channel flags: for every dead channel c, every producer's filter c
    and bias c, every BatchNorm's scale c and shift c, and every consumer's input slice c are
    False. `shapes`: parameter name -> shape (the model's). Only parameters some group touches
    are in the result."""
    out: dict[str, torch.Tensor] = {}

    def part(name: str) -> torch.Tensor:
        if name not in out:
            out[name] = torch.ones(tuple(shapes[name]), dtype=torch.bool)
        return out[name]

    for g in groups:
        dead = ~alive[g.name]
        if dead.shape != (g.size,):
            raise ValueError(f"channel flags of {g.name}: shape {tuple(dead.shape)}, group has {g.size} channels")
        for conv in g.convs:
            part(f"{conv}.weight")[dead] = False
            if f"{conv}.bias" in shapes:
                part(f"{conv}.bias")[dead] = False
        for bn in g.norms:
            part(f"{bn}.weight")[dead] = False
            part(f"{bn}.bias")[dead] = False
        for consumer, k in g.consumers:
            w = part(f"{consumer}.weight")
            cols = dead.repeat_interleave(k)
            w[:, cols] = False
    return out


def alive_channels(groups: list[ChannelGroup], mask: Mapping[str, torch.Tensor]) -> Channels:
    """Channel flags read back from a mask: channel c is alive when any weight of the first
    producer's filter c is (a dense mask, or one without that filter, leaves it alive)."""
    out = {}
    for g in groups:
        m = mask.get(f"{g.convs[0]}.weight")
        out[g.name] = torch.ones(g.size, dtype=torch.bool) if m is None else m.reshape(g.size, -1).any(dim=1).cpu()
    return out


def channel_density(alive: Channels) -> float:
    total = sum(a.numel() for a in alive.values())
    return sum(int(a.count_nonzero()) for a in alive.values()) / total


# ---- cost ----------------------------------------------------------------------------------


@torch.no_grad()
def flops_fraction(model: nn.Module, mask: Mapping[str, torch.Tensor], input_shape: tuple[int, ...]) -> float:
    """Multiply-accumulates of the Conv2d and Linear layers with the mask's weights removed, over
    the dense network's (BatchNorm, activations and pooling are not counted). Analytic: each
    layer's alive weights times the positions its kernel visits (H_out x W_out; 1 for Linear),
    read from one forward pass of a zero batch of one through the model itself in eval mode
    (nothing it holds changes: no statistics are updated, each module's mode is restored). Not a
    copy on the `meta` device: meta kernels run Python decompositions, which cost 16 ms per job
    for LeNet-300-100 and 147 ms for ResNet-20, more than a short job's training. For a
    structured mask this is the physically sliced network's count."""
    positions: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            def hook(mod, args, out, name=name):
                positions[name] = out[0, 0].numel() if isinstance(mod, nn.Conv2d) else 1
            hooks.append(m.register_forward_hook(hook))
    modes = [(m, m.training) for m in model.modules()]
    ref = next(model.parameters())
    try:
        model.eval()
        model(torch.zeros(1, *input_shape, dtype=ref.dtype, device=ref.device))
    finally:
        for m, training in modes:
            m.training = training
        for h in hooks:
            h.remove()
    dense = alive = 0
    params = dict(model.named_parameters())
    for name, pos in positions.items():
        w = params[f"{name}.weight"]
        dense += w.numel() * pos
        m = mask.get(f"{name}.weight")
        alive += (w.numel() if m is None else int(m.count_nonzero())) * pos
    return alive / dense
