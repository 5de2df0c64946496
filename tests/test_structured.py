"""Structured (channel) pruning and early-bird detection: oracles computed in the tests
(research file sections 2.6 and 3.6), and the training loop keeping pruned channels dead."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn as nn

from trainers import checkpoint, structure
from trainers.api import run_train_job
from trainers.early_bird import Detector, mask_distance, reference_mask
from trainers.jobs import DataConfig, OptimizerConfig, PruneConfig, TrainConfig, TrainJob, TrainPaths
from trainers.methods.channels import l1_filter, prune_channels, shuffle_channels
from trainers.models import build_model
from trainers.pruning import MaskApplier
from trainers.runtime import Runtime

torch.set_num_threads(1)


class TwoConv(nn.Module):
    """conv(2->3, 1x1) -> BN -> ReLU -> conv(3->4) -> BN -> ReLU -> pool -> fc: a tiny VGG."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 1)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _groups(model, mode="block_internal"):
    return structure.channel_groups(model, mode)


# ---- scores and the exact-count channel mask ------------------------------------------------


def test_l1_filter_score_and_channel_mask_on_hand_built_weights():
    net = TwoConv()
    with torch.no_grad():
        net.conv1.weight.copy_(torch.tensor([[1.0, -1.0], [0.1, 0.1], [2.0, 0.0]]).reshape(3, 2, 1, 1))
    groups = _groups(net)
    assert [(g.name, g.convs, g.norms, g.consumers) for g in groups] == [
        ("conv1", ("conv1",), ("bn1",), (("conv2", 1),)),
        ("conv2", ("conv2",), ("bn2",), (("fc", 1),)),
    ]
    w = net.state_dict()
    assert l1_filter(w, groups[0]).tolist() == pytest.approx([2.0, 0.2, 2.0])  # |1|+|-1|, 0.1+0.1, 2+0
    alive = structure.all_alive(groups[:1])
    new = prune_channels(w, alive, groups[:1], PruneConfig(fraction=0.2, granularity="channel"))
    assert new["conv1"].tolist() == [True, False, True]  # ceil(0.2 * 3) = 1 channel: the 0.2 one
    # equal scores 2.0 and 2.0: the next removal takes the smaller index first
    new2 = prune_channels(w, new, groups[:1], PruneConfig(fraction=0.2, granularity="channel",
                                                          strategy="magnitude_layerwise"))
    assert new2["conv1"].tolist() == [False, False, True]


def test_global_channel_pruning_keeps_one_channel_per_group_and_the_exact_count():
    net = TwoConv()
    with torch.no_grad():  # every channel of conv1 scores below every channel of conv2
        net.conv1.weight.fill_(0.01)
        net.conv2.weight.fill_(1.0)
    groups = _groups(net)
    new = prune_channels(net.state_dict(), structure.all_alive(groups), groups,
                         PruneConfig(fraction=0.5, granularity="channel"))
    # ceil(0.5 * 7) = 4 removed: conv1's two weakest (all tie: lowest indices), conv1's last kept
    # as the floor, then conv2's two lowest-index channels
    assert new["conv1"].tolist() == [False, False, True]
    assert new["conv2"].tolist() == [False, False, True, True]


def test_channel_mask_expands_to_filter_bias_bn_and_the_consumer_slice():
    net = TwoConv()
    groups = _groups(net)
    alive = structure.all_alive(groups)
    alive["conv1"][1] = False
    shapes = {n: tuple(p.shape) for n, p in net.named_parameters()}
    m = structure.expand(groups, alive, shapes)
    assert not m["conv1.weight"][1].any() and m["conv1.weight"][[0, 2]].all()
    assert m["conv1.bias"].tolist() == [True, False, True]
    assert m["bn1.weight"].tolist() == [True, False, True] and m["bn1.bias"].tolist() == [True, False, True]
    assert not m["conv2.weight"][:, 1].any() and m["conv2.weight"][:, [0, 2]].all()
    assert structure.alive_channels(groups, m)["conv1"].tolist() == [True, False, True]
    # bookkeeping against the closed form: conv1 keeps 2 of 3 filters of 2 weights, conv2 keeps
    # 4 x 2 of 4 x 3 kernels of 9, at 4 x 4 and 4 x 4 positions, fc all 20 weights once
    flops = structure.flops_fraction(net, m, (2, 4, 4))
    assert flops == pytest.approx((2 * 2 * 16 + 4 * 2 * 9 * 16 + 20) / (3 * 2 * 16 + 4 * 3 * 9 * 16 + 20))


def _positions_on_meta(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """The kernel positions of each Conv2d/Linear by shape propagation on the `meta` device, on
    a copy: independent of flops_fraction's forward pass through the model itself."""
    import copy

    shadow = copy.deepcopy(model).to("meta").eval()
    out: dict[str, int] = {}
    x = torch.zeros(1, *input_shape, device="meta")
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: out.__setitem__(n, o[0, 0].numel() if isinstance(mod, nn.Conv2d) else 1))
             for n, m in shadow.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    shadow(x)
    for h in hooks:
        h.remove()
    return out


@pytest.mark.parametrize("name, shape", [("mlp_300_100", (1, 8, 8)), ("cifar_resnet_20", (3, 32, 32)),
                                         ("small_cnn_bn", (3, 16, 16))])
def test_flops_fraction_matches_shape_propagation_and_leaves_the_model_as_it_was(name, shape):
    """flops_fraction reads positions from a batch-of-one forward through the model itself (the
    meta-device copy it used cost 16-147 ms a job): the fraction equals the one computed from
    meta shape propagation, exactly (integer counts), and the model's tensors (BatchNorm's running
    statistics included) and each module's mode are as before."""
    model = build_model(name, shape, 10, seed=0)
    model.train()
    next(m for m in model.modules() if m is not model).eval()  # a mixed state must be restored as it was
    gen = torch.Generator().manual_seed(1)
    mask = {n: torch.rand(p.shape, generator=gen) < 0.3 for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    positions = _positions_on_meta(model, shape)
    params = dict(model.named_parameters())
    dense = sum(params[f"{n}.weight"].numel() * pos for n, pos in positions.items())
    alive = sum(int(mask[f"{n}.weight"].sum()) * pos for n, pos in positions.items())
    assert structure.flops_fraction(model, mask, shape) == alive / dense
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_random_prune_shuffles_channels_within_each_group():
    alive = {"a": torch.tensor([True, False, True, False, True]), "b": torch.tensor([False, True, True])}
    out = shuffle_channels(alive, seed=3)
    assert {k: int(v.sum()) for k, v in out.items()} == {"a": 3, "b": 2}
    again = shuffle_channels(alive, seed=3)  # a pure function of the seed
    assert all(torch.equal(out[k], again[k]) for k in out)
    assert any(not torch.equal(shuffle_channels(alive, s)["a"], alive["a"]) for s in range(5))


# ---- masked == physically removed ------------------------------------------------------------


def _random_state(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen, dtype=t.dtype) + 0.5)
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype))


def test_masked_equals_physically_sliced_in_eval_mode():
    net = build_model("small_cnn_bn", (64,), 10, seed=0).double()
    _random_state(net, 1)
    groups = _groups(net)  # block.conv1 (8 channels), conv2 (16)
    alive = structure.all_alive(groups)
    alive["block.conv1"][[1, 4, 5]] = False
    alive["conv2"][[0, 3, 7, 8, 15]] = False
    shapes = {n: tuple(p.shape) for n, p in net.named_parameters()}
    mask = structure.expand(groups, alive, shapes)
    MaskApplier(net, {k: v for k, v in mask.items()}).apply_to_weights()
    net.eval()

    # the sliced network, built by hand from the kept indices
    k1 = alive["block.conv1"].nonzero().squeeze(1)
    k2 = alive["conv2"].nonzero().squeeze(1)
    small = build_model("small_cnn_bn", (64,), 10, seed=0).double().eval()
    b, sb = net.block, small.block
    sb.conv1 = nn.Conv2d(8, len(k1), 3, padding=1, bias=False).double()
    sb.bn1 = nn.BatchNorm2d(len(k1)).double().eval()
    sb.conv2 = nn.Conv2d(len(k1), 8, 3, padding=1, bias=False).double()
    small.conv2 = nn.Conv2d(8, len(k2), 3, stride=2, padding=1).double()
    small.bn2 = nn.BatchNorm2d(len(k2)).double().eval()
    small.fc = nn.Linear(len(k2), 10).double()
    with torch.no_grad():
        for dst, src in ((small.conv, net.conv), (small.bn, net.bn), (sb.bn2, b.bn2)):
            dst.load_state_dict(src.state_dict())
        sb.conv1.weight.copy_(b.conv1.weight[k1])
        for n in ("weight", "bias", "running_mean", "running_var"):
            getattr(sb.bn1, n).copy_(getattr(b.bn1, n)[k1])
            getattr(small.bn2, n).copy_(getattr(net.bn2, n)[k2])
        sb.conv2.weight.copy_(b.conv2.weight[:, k1])
        small.conv2.weight.copy_(net.conv2.weight[k2])
        small.conv2.bias.copy_(net.conv2.bias[k2])
        small.fc.weight.copy_(net.fc.weight[:, k2])
        small.fc.bias.copy_(net.fc.bias)
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        a, c = net(x), small(x)
    # float64: the two differ only by the order of summing exact zeros away, far below 1e-10
    assert torch.allclose(a, c, rtol=0, atol=1e-10), (a - c).abs().max()
    # and the masked channels did matter (the check is not vacuous)
    with torch.no_grad():
        assert not torch.allclose(build_model("small_cnn_bn", (64,), 10, seed=0).double().eval()(x), a)


# ---- residual coupling ------------------------------------------------------------------------


def test_residual_coupling_one_side_of_the_add_leaves_the_channel_alive_the_group_kills_it():
    pytest.importorskip("torch_pruning")
    net = build_model("cifar_resnet_20", (3, 8, 8), 10, seed=0).eval()
    _random_state(net, 3)
    groups = {g.name: g for g in _groups(net, "coupled")}
    stage1 = groups["conv"]  # the stem and every first-stage block's last conv meet at the adds
    assert set(stage1.convs) == {"conv", "blocks.0.conv2", "blocks.1.conv2", "blocks.2.conv2"}
    assert set(stage1.norms) == {"bn", "blocks.0.bn2", "blocks.1.bn2", "blocks.2.bn2"}
    shapes = {n: tuple(p.shape) for n, p in net.named_parameters()}
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    c = 5

    def stage_output(mask):
        model = build_model("cifar_resnet_20", (3, 8, 8), 10, seed=0).eval()
        model.load_state_dict(net.state_dict())
        MaskApplier(model, mask).apply_to_weights()
        seen = {}
        model.blocks[2].register_forward_hook(lambda m, a, out: seen.setdefault("out", out))
        with torch.no_grad():
            model(x)
        return seen["out"][:, c]

    one_side = {"blocks.0.conv2.weight": torch.ones(shapes["blocks.0.conv2.weight"], dtype=torch.bool),
                "blocks.0.bn2.weight": torch.ones(16, dtype=torch.bool),
                "blocks.0.bn2.bias": torch.ones(16, dtype=torch.bool)}
    for v in one_side.values():
        v[c] = False
    assert stage_output(one_side).abs().sum() > 0  # alive through the identity path
    alive = {g.name: torch.ones(g.size, dtype=torch.bool) for g in groups.values()}
    alive["conv"][c] = False
    mask = structure.expand(list(groups.values()), alive, shapes)
    assert torch.count_nonzero(stage_output(mask)) == 0


# ---- early bird -------------------------------------------------------------------------------


def test_bn_scale_mask_uses_the_references_strict_threshold():
    gamma = torch.tensor([0.5, 0.1, 0.3, 0.2, 0.05, 0.4])
    # t = sorted[int(6 * 0.5)] = sorted[3] = 0.3; kept: |gamma| > 0.3 -> 0.5 and 0.4
    assert reference_mask(gamma, 0.5).tolist() == [True, False, False, False, False, True]
    # ties at t all go (the reference's count is not int(C p) then)
    assert reference_mask(torch.tensor([0.2, 0.2, 0.2, 0.9]), 0.25).tolist() == [False, False, False, True]


def test_normalized_hamming_distance():
    m1 = torch.tensor([1, 1, 0, 0, 1, 0, 1, 1], dtype=torch.bool)
    m2 = torch.tensor([1, 0, 0, 0, 1, 1, 1, 1], dtype=torch.bool)
    assert mask_distance(m1, m2) == 0.25


def test_detector_on_a_scripted_sequence():
    base = torch.zeros(20, dtype=torch.bool)

    def flip(n):  # a mask at distance n / 20 from `base`
        m = base.clone()
        m[:n] = True
        return m

    # epochs 0..3 fill the queue; at epoch 4 the newest is 0.25 from epoch 0: no detection.
    # epoch 5: the queue holds epochs 1..5, all within 0.1 of the newest -> fires at 5.
    seq = [flip(5), flip(1), flip(0), flip(2), flip(0), flip(1), flip(0)]
    d = Detector(fraction=0.5, queue=5, threshold=0.1)
    fired = [d.push(e, m) for e, m in enumerate(seq)]
    assert fired == [False, False, False, False, False, True, False]
    assert d.detected_at == 5
    assert d.distances == pytest.approx([0.0, 0.05, 0.05, 0.05])  # newest flip(1) vs flip(1), flip(0), flip(2), flip(0)
    # identical masks from the start: never before the queue is full (epoch 4)
    d2 = Detector(fraction=0.5, queue=5, threshold=0.1)
    assert [d2.push(e, base) for e in range(6)] == [False] * 4 + [True, False]


def test_one_sgd_step_with_the_l1_penalty():
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -0.3, 0.0]))
    model = nn.Sequential(bn)
    applier = MaskApplier(model, {}, l1_gamma=1e-2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.0)
    out = model(torch.randn(2, 3, 2, 2))
    (0.0 * out.sum()).backward()  # the loss contributes a zero gradient
    applier.apply_to_grads()
    opt.step()
    # gamma <- gamma - lr * s * sign(gamma): 0.5 - 1e-3, -0.3 + 1e-3, 0 stays (sign 0)
    assert bn.weight.tolist() == pytest.approx([0.499, -0.299, 0.0], abs=1e-7)


# ---- the training loop -----------------------------------------------------------------------

CFG = TrainConfig(
    model="small_cnn_bn",
    data=DataConfig(name="digits"),
    iterations=30,
    batch_size=32,
    optimizer=OptimizerConfig(lr=0.05, momentum=0.9, weight_decay=1e-3),
    eval_train_examples=128,
    l1_gamma=1e-3,
)
RT = Runtime(device=torch.device("cpu"))


@pytest.mark.parametrize("groups", ["block_internal", "coupled"])
def test_pruned_channels_are_bitwise_zero_after_training_bn_bias_included(tmp_path, groups):
    if groups == "coupled":
        pytest.importorskip("torch_pruning")
    dense = run_train_job(TrainJob(train=CFG, init_seed=0, data_seed=1, save_iters=(5,)),
                          TrainPaths(out_dir=str(tmp_path / "dense")), RT)
    prune_cfg = PruneConfig(fraction=0.3, granularity="channel", channel_score="bn_gamma", groups=groups)
    parent_w, parent_m = dense.weights_path, dense.mask_path
    model = build_model("small_cnn_bn", (64,), 10, seed=0)
    gs = structure.channel_groups(model, groups)
    total = sum(g.size for g in gs)
    remaining = total
    for level in (1, 2):
        job = TrainJob(train=CFG, init_seed=0, data_seed=1, start_iter=5, prune=prune_cfg)
        res = run_train_job(job, TrainPaths(out_dir=str(tmp_path / f"l{level}"), parent_weights=parent_w,
                                            parent_mask=parent_m, rewind_weights=dense.saved_weights[5]), RT)
        remaining -= math.ceil(0.3 * remaining)
        assert res.channel_density == pytest.approx(remaining / total)
        mask, w = checkpoint.load_mask(res.mask_path), checkpoint.load_weights(res.weights_path)
        alive = structure.alive_channels(gs, mask)
        for g in gs:
            dead = ~alive[g.name]
            assert dead.any() or level == 1
            for conv in g.convs:
                assert torch.count_nonzero(w[f"{conv}.weight"][dead]) == 0
                if f"{conv}.bias" in w:
                    assert torch.count_nonzero(w[f"{conv}.bias"][dead]) == 0
            for bn in g.norms:
                assert torch.count_nonzero(w[f"{bn}.weight"][dead]) == 0
                assert torch.count_nonzero(w[f"{bn}.bias"][dead]) == 0, f"{bn}.bias"
            for consumer, k in g.consumers:
                assert torch.count_nonzero(w[f"{consumer}.weight"][:, dead.repeat_interleave(k)]) == 0
        assert 0 < res.flops_fraction < 1 and 0 < res.density < 1
        parent_w, parent_m = res.weights_path, res.mask_path


# ---- planning --------------------------------------------------------------------------------


def _spec(**pruning):
    from orchestrator.spec import load_spec

    sets = [f"pruning.{k}={v}" for k, v in pruning.items()]
    return load_spec("configs/demo_structured.yaml", sets)


def test_planned_channel_densities_are_exact_and_the_floor_is_refused():
    from orchestrator.planner import plan, planned_densities
    from orchestrator.spec import SpecError

    # small_cnn_bn coupled groups: 8 (stem + block output) + 8 (block.conv1) + 16 (conv2) = 32
    assert planned_densities(_spec()) == [1.0, 22 / 32, 15 / 32]  # 32 - ceil(9.6), 22 - ceil(6.6)
    lw = _spec(strategy="magnitude_layerwise", groups="block_internal")  # 8 and 16 channels
    assert planned_densities(lw) == [1.0, (5 + 11) / 24, (3 + 7) / 24]
    with pytest.raises(SpecError) as e:
        planned_densities(_spec(strategy="magnitude_layerwise", groups="block_internal", levels=6, fraction=0.5))
    assert e.value.field == "pruning.levels"
    jobs = plan(_spec()).jobs.values()
    assert {j.meta.granularity for j in jobs} == {"channel"}
    assert {j.spec.prune.granularity for j in jobs if j.spec.prune is not None} == {"channel"}


def test_l1_gamma_needs_batchnorm_and_reaches_the_id_only_when_set():
    from orchestrator.jobid import job_id
    from orchestrator.planner import plan
    from orchestrator.spec import SpecError, load_spec

    with pytest.raises(SpecError) as e:
        plan(load_spec("configs/demo.yaml", ["train.l1_gamma=0.001"]))  # an MLP: no BatchNorm
    assert e.value.field == "train.l1_gamma"
    plain = TrainJob(train=TrainConfig(model="mlp_300_100", data=DataConfig(), iterations=10), init_seed=0, data_seed=0)
    slim = dataclasses.replace(plain, train=dataclasses.replace(plain.train, l1_gamma=1e-4))
    assert job_id("train", plain, {}) != job_id("train", slim, {})
    weight = dataclasses.replace(plain, prune=PruneConfig())
    channel = dataclasses.replace(plain, prune=PruneConfig(granularity="channel"))
    assert job_id("train", weight, {}) != job_id("train", channel, {})


# ---- the early-bird search and its retrain jobs ---------------------------------------------


def test_early_bird_search_is_deterministic_and_feeds_its_retrain_jobs(tmp_path):
    from trainers import early_bird as eb
    from trainers.jobs import EarlyBirdConfig

    ipe = -(-1437 // CFG.batch_size)  # digits: 1437 training examples, so 45 iterations an epoch
    cfg = dataclasses.replace(CFG, iterations=ipe * 12, l1_gamma=1e-2)
    search_cfg = EarlyBirdConfig(kind="channel", fractions=(0.3, 0.5), queue=3, threshold=0.2)
    job = TrainJob(train=cfg, init_seed=0, data_seed=1, save_iters=(0,), early_bird=search_cfg)
    a = run_train_job(job, TrainPaths(out_dir=str(tmp_path / "a")), RT)
    b = run_train_job(job, TrainPaths(out_dir=str(tmp_path / "b")), RT)
    assert a.early_bird == b.early_bird
    for rec in a.early_bird:
        assert rec["detected"] and rec["detect_epoch"] >= 2  # queue 3: never before 2 epochs of training
        assert rec["detect_iter"] == ipe * rec["detect_epoch"]
        assert all(d <= 0.2 for d in rec["distances"]) and len(rec["distances"]) == 2
        ma, mb = (checkpoint.load_mask(tmp_path / d / eb.mask_file(rec["fraction"])) for d in "ab")
        assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert a.end_iter == max(r["detect_iter"] for r in a.early_bird)  # stop: at_detection
    p = a.early_bird[0]["fraction"]
    src = tmp_path / "a"
    mask_in = str(src / eb.mask_file(p))
    cont = run_train_job(
        TrainJob(train=cfg, init_seed=0, data_seed=1, start_at_detection=True),
        TrainPaths(out_dir=str(tmp_path / "cont"), parent_mask=mask_in, rewind_weights=str(src / eb.weights_file(p)),
                   detection=str(src / eb.detection_file(p))), RT)
    assert cont.start_iter == a.early_bird[0]["detect_iter"] and cont.end_iter == cfg.iterations
    reinit = run_train_job(TrainJob(train=cfg, init_seed=0, data_seed=1, reinit_seed=7),
                           TrainPaths(out_dir=str(tmp_path / "reinit"), parent_mask=mask_in), RT)
    for res in (cont, reinit):
        mask, w = checkpoint.load_mask(res.mask_path), checkpoint.load_weights(res.weights_path)
        for name, m in mask.items():
            assert torch.count_nonzero(w[name][~m]) == 0, name  # BatchNorm shifts of dead channels included
        assert res.density == pytest.approx(a.early_bird[0]["density"])


def test_early_bird_jobs_are_planned_up_front_from_the_search_id():
    from orchestrator.graph import JobMeta  # noqa: F401  (the plan's metadata type)
    from orchestrator.planner import plan
    from orchestrator.rows import job_rows
    from orchestrator.schemas import EARLY_BIRD
    from trainers import early_bird as eb

    jobs = list(plan(_spec()).jobs.values())
    searches = [j for j in jobs if j.meta.retrain == "eb_search"]
    assert len(searches) == 1 and searches[0].spec.early_bird.fractions == (0.3, 0.5)
    sid = searches[0].id
    retrains = [j for j in jobs if j.meta.role == "early_bird" and j.id != sid]
    # 2 fractions x (continue, reinit, rewind at the one rewinding point k = 0)
    assert sorted(j.meta.retrain for j in retrains) == ["eb_continue"] * 2 + ["eb_reinit"] * 2 + ["eb_rewind"] * 2
    for j in retrains:
        assert j.parents == (sid,)
        p = round(1 - j.meta.density, 6)
        assert j.inputs["parent_mask"] == (sid, eb.mask_file(p))
        if j.meta.retrain == "eb_continue":
            assert j.spec.start_at_detection and j.inputs["detection"] == (sid, eb.detection_file(p))
            assert j.inputs["rewind_weights"] == (sid, eb.weights_file(p))
    # the IMP lineages are unchanged by adding the early-bird block
    without = {j.id for j in plan(_spec(early_bird="null")).jobs.values()}
    assert without == {j.id for j in jobs if j.meta.role != "early_bird"}
    # a search's record becomes rows of the early_bird table with its schema's columns
    rec = {"fraction": 0.3, "detected": True, "detect_epoch": 3, "detect_iter": 69, "distances": [0.0, 0.05],
           "channels_kept": 22, "density": 0.56}
    result = {"density": 1.0, "start_iter": 0, "end_iter": 69, "test_loss": 1.0, "test_accuracy": 0.5,
              "train_loss": 1.0, "train_accuracy": 0.5, "weights_path": "w", "mask_path": "m", "metrics": [],
              "early_bird": [rec]}
    record = {"result": result, "wall_seconds": 1.0, "attempts": 1, "host": "h", "node": "n", "device": "cpu"}
    rows = job_rows(searches[0], record)
    assert list(rows) == ["early_bird", "layers", "metrics", "runs"]  # runs last: a recorded job has the rest (rows.result_tables)
    assert set(rows["early_bird"][0]) == set(EARLY_BIRD.names) - {"experiment"}


def test_unstructured_early_bird_search_on_a_network_without_batchnorm(tmp_path):
    from trainers import early_bird as eb
    from trainers.jobs import EarlyBirdConfig

    cfg = TrainConfig(model="mlp_300_100", data=DataConfig(name="digits"), iterations=45 * 4, batch_size=32,
                      optimizer=OptimizerConfig(lr=0.01, momentum=0.0), eval_train_examples=64)
    search = EarlyBirdConfig(kind="unstructured", fractions=(0.5,), queue=2, threshold=0.5, stop="never")
    res = run_train_job(TrainJob(train=cfg, init_seed=0, data_seed=0, early_bird=search),
                        TrainPaths(out_dir=str(tmp_path)), RT)
    (rec,) = res.early_bird
    assert rec["detected"] and rec["detect_epoch"] == 1  # queue 2: the first comparison, well within 0.5
    assert res.end_iter == cfg.iterations  # stop: never
    total = 64 * 300 + 300 * 100 + 100 * 10
    # continuous weights, no ties: the strict threshold removes int(C p) + 1 weights
    assert rec["channels_kept"] == total - (int(total * 0.5) + 1)
    assert rec["density"] == pytest.approx(rec["channels_kept"] / total)
    mask = checkpoint.load_mask(tmp_path / eb.mask_file(0.5))
    assert sum(int(m.sum()) for m in mask.values()) == rec["channels_kept"]
