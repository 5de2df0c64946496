import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

from trainers.jobs import PruneConfig
from trainers.models import build_model, meta_model
from trainers.pruning import (
    MaskApplier,
    density,
    full_mask,
    layer_densities,
    masked_weights,
    planned_densities,
    planned_remaining,
    prunable_names,
    prunable_sizes,
    prune,
    prune_count,
)

torch.set_num_threads(1)


class Tiny(nn.Module):
    """Conv + BN + two Linear layers with biases: every kind of tensor pruning must handle."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.lin = nn.Linear(6 * 4 * 4, 20)
        self.fc = nn.Linear(20, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return self.fc(torch.relu(self.lin(x)))


def _random_weights(model, gen):
    # Continuous random values: no ties, so torch's (unspecified) tie order cannot matter.
    return {k: torch.randn(v.shape, generator=gen, dtype=torch.float64).to(v.dtype) for k, v in model.state_dict().items()}


def _modules(model, names):
    mods = dict(model.named_modules())
    return [(mods[n.rsplit(".", 1)[0]], "weight") for n in names]


def _oracle(model, weights, mask, count, layerwise):
    """torch.nn.utils.prune on a copy that already carries `mask`."""
    m = copy.deepcopy(model)
    m.load_state_dict(weights)
    targets = _modules(m, list(mask))
    for (mod, attr), k in zip(targets, mask):
        tprune.custom_from_mask(mod, attr, mask[k])
    if layerwise:
        for (mod, attr), k in zip(targets, mask):
            tprune.l1_unstructured(mod, attr, amount=count[k])
    else:
        tprune.global_unstructured(targets, pruning_method=tprune.L1Unstructured, amount=count)
    return {k: mod.weight_mask.bool() for (mod, _), k in zip(targets, mask)}


@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_global_matches_torch_global_unstructured_over_levels(fraction):
    model = Tiny()
    gen = torch.Generator().manual_seed(0)
    mask = full_mask(model)
    cfg = PruneConfig("magnitude_global", fraction)
    for level in range(5):
        weights = _random_weights(model, gen)  # "training" changed every weight, pruned ones too
        ours = prune(weights, mask, cfg)
        # torch's PruningContainer applies an int amount to the still-unpruned entries only.
        count = math.ceil(fraction * sum(int(m.sum()) for m in mask.values()))
        ref = _oracle(model, weights, mask, count, layerwise=False)
        assert ours.keys() == ref.keys()
        for k in ours:
            assert torch.equal(ours[k], ref[k]), (level, k)
        assert all(not (ours[k] & ~mask[k]).any() for k in ours), "a pruned weight came back"
        mask = ours


def test_layerwise_matches_torch_l1_unstructured_over_levels():
    model = Tiny()
    gen = torch.Generator().manual_seed(1)
    mask = full_mask(model)
    cfg = PruneConfig("magnitude_layerwise", 0.3)
    for level in range(4):
        weights = _random_weights(model, gen)
        ours = prune(weights, mask, cfg)
        count = {k: math.ceil(0.3 * int(m.sum())) for k, m in mask.items()}
        ref = _oracle(model, weights, mask, count, layerwise=True)
        for k in ours:
            assert torch.equal(ours[k], ref[k]), (level, k)
            assert int(ours[k].sum()) == int(mask[k].sum()) - count[k]
        mask = ours


def test_already_pruned_weights_rank_as_removed_whatever_their_value():
    w = {"a": torch.tensor([[5.0, 0.1, 0.2, 0.3, 4.0, 3.0]])}
    m = {"a": torch.tensor([[False, True, True, True, True, True]])}
    # 5 alive, ceil(0.4 * 5) = 2 removed: the two smallest alive (0.1, 0.2); the large dead
    # 5.0 neither survives nor protects 0.1.
    out = prune(w, m, PruneConfig("magnitude_global", 0.4))
    assert out["a"].tolist() == [[False, False, False, True, True, True]]


def test_hand_computed_counts_and_planned_remaining():
    assert planned_remaining({"a": 10}, PruneConfig("magnitude_global", 0.2), 7) == [10, 8, 6, 4, 3, 2, 1, 0]
    # 0.07 * 100 is 7.000000000000001 in floating point; the count is exactly 7.
    assert prune_count(100, 0.07) == 7
    assert planned_remaining({"a": 100}, PruneConfig("magnitude_global", 0.07), 1) == [100, 93]
    # layerwise rounds per tensor: 10 -> 8 and 3 -> 2 (total 10), global: 13 -> 10.
    assert planned_remaining({"a": 10, "b": 3}, PruneConfig("magnitude_layerwise", 0.2), 1) == [13, 10]
    assert planned_remaining({"a": 10, "b": 3}, PruneConfig("magnitude_global", 0.2), 2) == [13, 10, 8]


@pytest.mark.parametrize("strategy", ["magnitude_global", "magnitude_layerwise"])
def test_density_follows_planned_remaining_and_geometric_law(strategy):
    model = build_model("mlp_300_100", (64,), 10, seed=0)
    cfg = PruneConfig(strategy, 0.2)
    levels = 6
    sizes = prunable_sizes(model)
    planned = planned_remaining(sizes, cfg, levels)
    plan_d = planned_densities(sizes, cfg, levels)
    mask = full_mask(model)
    total = sum(sizes.values())
    gen = torch.Generator().manual_seed(2)
    for level in range(1, levels + 1):
        weights = _random_weights(model, gen)
        mask = prune(weights, mask, cfg, seed=level)
        got = sum(int(m.sum()) for m in mask.values())
        assert got == planned[level]
        assert density(mask) == got / total == plan_d[level]
        # ceil rounding costs at most one weight per tensor per level
        assert abs(density(mask) - 0.8**level) <= level * len(sizes) / total


def test_planned_remaining_from_meta_model_matches_real_prune():
    shape = (3, 32, 32)
    meta = meta_model("cifar_resnet_20", shape, 10)
    real = build_model("cifar_resnet_20", shape, 10, seed=0)
    ignore = ("fc.weight",)
    sizes = prunable_sizes(meta, ignore)
    assert sizes == {k: m.numel() for k, m in full_mask(real, ignore).items()}
    for strategy in ["magnitude_global", "magnitude_layerwise"]:
        cfg = PruneConfig(strategy, 0.2, ignore)
        planned = planned_remaining(sizes, cfg, 3)
        mask = full_mask(real, ignore)
        for level in (1, 2, 3):
            mask = prune(real.state_dict(), mask, cfg)
            assert sum(int(m.sum()) for m in mask.values()) == planned[level]


@pytest.mark.parametrize("strategy", ["magnitude_global", "magnitude_layerwise"])
def test_random_control_shuffles_imps_mask_within_each_layer(strategy):
    model = Tiny()
    weights = _random_weights(model, torch.Generator().manual_seed(3))
    imp = prune(weights, full_mask(model), PruneConfig(strategy, 0.6))
    rnd = prune(weights, imp, PruneConfig("random", 0.6), seed=11)
    again = prune(weights, imp, PruneConfig("random", 0.6), seed=11)
    other = prune(weights, imp, PruneConfig("random", 0.6), seed=12)
    assert {k: int(m.sum()) for k, m in rnd.items()} == {k: int(m.sum()) for k, m in imp.items()}
    assert any(not torch.equal(rnd[k], imp[k]) for k in rnd)
    assert all(torch.equal(rnd[k], again[k]) for k in rnd)
    assert any(not torch.equal(rnd[k], other[k]) for k in rnd)
    # positions are drawn over the whole tensor, IMP's pruned positions included
    assert any((rnd[k] & ~imp[k]).any() for k in rnd)


def test_ties_are_broken_by_position_deterministically():
    w = {"a": torch.tensor([2.0, -1.0, 1.0, 1.0, 3.0, -1.0]), "b": torch.ones(2, 3)}
    m = {k: torch.ones(v.shape, dtype=torch.bool) for k, v in w.items()}
    # global: 12 alive, remove ceil(0.25 * 12) = 3 of the eight 1.0s: the first three in
    # (a, b) order are a[1], a[2], a[3].
    out = prune(w, m, PruneConfig("magnitude_global", 0.25))
    assert out["a"].tolist() == [True, False, False, False, True, True]
    assert out["b"].all()
    # layerwise: a drops ceil(1.5) = 2 -> a[1], a[2]; b drops 2 -> its first two
    out = prune(w, m, PruneConfig("magnitude_layerwise", 0.25))
    assert out["a"].tolist() == [True, False, False, True, True, True]
    assert out["b"].flatten().tolist() == [False, False, True, True, True, True]

    big = {"x": torch.full((1000,), 0.5)}
    bm = {"x": torch.ones(1000, dtype=torch.bool)}
    one = prune(big, bm, PruneConfig("magnitude_global", 0.37))
    two = prune(big, bm, PruneConfig("magnitude_global", 0.37))
    assert torch.equal(one["x"], two["x"]) and int(one["x"].sum()) == 1000 - 370


def test_ignore_list_and_never_bias_or_batchnorm():
    model = build_model("cifar_resnet_20", (3, 32, 32), 10, seed=0)
    names = prunable_names(model)
    assert all(n.endswith(".weight") for n in names)
    assert not any(".bn" in n or n.startswith("bn") or "shortcut.1" in n for n in names)
    assert "fc.weight" in names and "conv.weight" in names
    assert names == [k for k in model.state_dict() if k in set(names)]  # state_dict order

    ignore = ("fc.weight", "*.shortcut.*")
    mask = full_mask(model, ignore)
    assert "fc.weight" not in mask and not any("shortcut" in k for k in mask)
    pruned = prune(model.state_dict(), mask, PruneConfig("magnitude_global", 0.5, ignore))
    sd = masked_weights(model.state_dict(), pruned)
    assert torch.equal(sd["fc.weight"], model.state_dict()["fc.weight"])  # density 1
    assert torch.equal(sd["blocks.3.shortcut.0.weight"], model.state_dict()["blocks.3.shortcut.0.weight"])
    assert density(pruned) == pytest.approx(0.5, abs=1e-6)

    with pytest.raises(ValueError, match="fc_typo"):
        prunable_names(model, ("fc_typo.weight",))


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, float("nan"), True])
def test_bad_fraction_is_rejected_by_name(bad):
    model = Tiny()
    with pytest.raises(ValueError, match="fraction"):
        prune(model.state_dict(), full_mask(model), PruneConfig("magnitude_global", bad))
    with pytest.raises(ValueError, match="fraction"):
        planned_remaining({"a": 10}, PruneConfig("magnitude_global", bad), 2)


def test_bad_keys_shapes_strategy_and_nan_are_named():
    model = Tiny()
    weights, mask = model.state_dict(), full_mask(model)
    del weights["lin.weight"]
    with pytest.raises(ValueError, match="lin.weight"):
        prune(weights, mask, PruneConfig())
    weights = model.state_dict()
    mask["fc.weight"] = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="fc.weight"):
        prune(weights, mask, PruneConfig())
    with pytest.raises(ValueError, match="strategy"):
        prune(weights, full_mask(model), PruneConfig("magnitude", 0.2))
    weights["conv.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="conv.weight"):
        prune(weights, full_mask(model), PruneConfig())


def _train(model, mask, make_opt, mask_grads=True, mask_weights=True, steps=30):
    gen = torch.Generator().manual_seed(5)
    applier = MaskApplier(model, mask)
    applier.apply_to_weights()
    opt = make_opt(model.parameters())
    for _ in range(steps):
        x = torch.randn(8, 3, 8, 8, generator=gen)
        y = torch.randint(0, 10, (8,), generator=gen)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        if mask_grads:
            applier.apply_to_grads()
        opt.step()
        if mask_weights:
            applier.apply_to_weights()
    return opt


OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=5e-4),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=5e-4),
}


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero_through_training(opt_name):
    model = build_model("cifar_resnet_20", (3, 8, 8), 10, seed=0)
    mask = prune(model.state_dict(), full_mask(model), PruneConfig("magnitude_global", 0.6))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = _train(model, mask, OPTIMIZERS[opt_name])
    params = dict(model.named_parameters())
    for k, m in mask.items():
        assert (params[k][~m] == 0).all(), k
        state = opt.state[params[k]]
        for buf in ("momentum_buffer", "exp_avg", "exp_avg_sq"):
            if buf in state:
                assert (state[buf][~m] == 0).all(), (k, buf)
    assert any(not torch.equal(params[k][mask[k]], start[k][mask[k]]) for k in mask), "nothing trained"

    # Negative control: masking the weights only once at the start lets them come back, so
    # the assertions above can fail.
    model = build_model("cifar_resnet_20", (3, 8, 8), 10, seed=0)
    _train(model, mask, OPTIMIZERS[opt_name], mask_grads=False, mask_weights=False, steps=3)
    params = dict(model.named_parameters())
    assert any((params[k][~m] != 0).any() for k, m in mask.items())


def test_mask_applier_keeps_dtype_and_memory_format():
    model = build_model("cifar_resnet_20", (3, 8, 8), 10, seed=0).to(memory_format=torch.channels_last)
    mask = prune(model.state_dict(), full_mask(model), PruneConfig("magnitude_layerwise", 0.5))
    applier = MaskApplier(model, mask)
    for p, m in zip(applier.params, applier.masks):
        assert m.dtype == p.dtype and m.device == p.device and m.stride() == p.stride()
    applier.apply_to_weights()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[k] != 0, mask[k]) for k in mask)
    with pytest.raises(ValueError, match="nope.weight"):
        MaskApplier(model, {"nope.weight": torch.ones(3, dtype=torch.bool)})
