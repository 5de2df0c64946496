"""Pruning at initialization and IMP's mask criteria (trainers/methods/): each method checked
against an independent computation (research file, 1.8), the exact counts, the ablations, the
scoring batch and the weight correlation."""
from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from trainers import methods
from trainers.correlation import layer_rows, pearson
from trainers.jobs import AtInitConfig, DataConfig, PruneConfig, TrainConfig, TrainJob, TrainPaths
from trainers.methods import ScoreInputs, compute_mask, round_counts, select
from trainers.methods.at_init import grasp_products, snip, synflow
from trainers.pruning import full_mask, prune, shuffle_within_layers


def _chain(widths: list[int], seed: int = 0, scale: float = 1.0) -> nn.Sequential:
    """A bias-free ReLU MLP in float64."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b, bias=False))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    net = nn.Sequential(*layers).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return net


def _inputs(net: nn.Module, **kw) -> ScoreInputs:
    return ScoreInputs(weights={k: v.clone() for k, v in net.state_dict().items()}, mask=full_mask(net), model=net, **kw)


# ---- SynFlow --------------------------------------------------------------------------------


def test_synflow_conserves_flow_in_every_layer():
    net = _chain([6, 5, 4, 3], seed=1)
    scores = synflow(_inputs(net, input_shape=(6,)))
    w = [p.detach().abs() for p in net.parameters()]
    R = float(torch.ones(3, dtype=torch.float64) @ w[2] @ w[1] @ w[0] @ torch.ones(6, dtype=torch.float64))
    for name, s in scores.items():  # the sum over each layer is R (float64: to 1e-12 relative)
        assert float(s.sum()) == pytest.approx(R, rel=1e-12), name
        assert bool((s >= 0).all())


def test_synflow_two_layer_closed_form():
    net = _chain([4, 3, 2], seed=2)
    s = synflow(_inputs(net, input_shape=(4,)))
    w1, w2 = (p.detach() for p in net.parameters())
    # S(W1_ij) = |W1_ij| * sum_k |W2_ki|; S(W2_ki) = |W2_ki| * sum_j |W1_ij|
    expect1 = w1.abs() * w2.abs().sum(0)[:, None]
    expect2 = w2.abs() * w1.abs().sum(1)[None, :]
    torch.testing.assert_close(s["0.weight"], expect1, rtol=1e-12, atol=0)
    torch.testing.assert_close(s["2.weight"], expect2, rtol=1e-12, atol=0)


def test_synflow_float64_on_a_copy_where_float32_underflows():
    net = _chain([8] * 41, seed=3)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(p.abs() * 0.05)  # 40 layers of 8x8 positive weights x 0.05: R ~ 1e-46
    before = {k: v.clone() for k, v in net.state_dict().items()}
    # the trap, computed independently: float32 flow underflows to exactly zero
    with torch.no_grad():
        x32 = copy.deepcopy(net).float()(torch.ones(1, 8))
    assert float(x32.sum()) == 0.0
    inp = _inputs(net, input_shape=(8,))
    scores = synflow(inp)
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    assert flat.numel() == 2560 and bool((flat > 0).all()) and bool(torch.isfinite(flat).all())
    mask = compute_mask("synflow", inp, [1280], "global", iterations=10)
    assert sum(int(m.sum()) for m in mask.values()) == 1280
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the caller's weights, bitwise


def test_synflow_abs_of_buffers_and_eval_mode_batchnorm():
    """A BatchNorm with negative running mean and weight: SynFlow takes |.| of every float entry
    and normalises with the running statistics (eval mode), so the scores equal those of the
    explicit positive affine map."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2, bias=False)).double()
    with torch.no_grad():
        bn = net[1]
        bn.weight.copy_(torch.tensor([-1.0, 2.0, 0.5, -0.3]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3, -0.4]))
        bn.running_mean.copy_(torch.tensor([-0.5, 0.2, 0.0, 1.0]))
        bn.running_var.copy_(torch.tensor([2.0, 0.5, 1.0, 3.0]))
    net.train()  # scoring must not depend on the mode the caller left
    s = synflow(_inputs(net, input_shape=(3,)))
    w1 = net[0].weight.detach().abs().requires_grad_()
    w2 = net[3].weight.detach().abs().requires_grad_()
    g, b = bn.weight.detach().abs(), bn.bias.detach().abs()
    mu, var = bn.running_mean.abs(), bn.running_var.abs()
    h = (w1 @ torch.ones(3, dtype=torch.float64) - mu) / torch.sqrt(var + bn.eps) * g + b
    R = (w2 @ torch.relu(h)).sum()
    g1, g2 = torch.autograd.grad(R, [w1, w2])
    torch.testing.assert_close(s["0.weight"], (w1 * g1).detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(s["3.weight"], (w2 * g2).detach(), rtol=1e-12, atol=0)


def test_synflow_rounds_shrink_nested_to_the_exact_count(monkeypatch):
    net = _chain([10, 8, 6, 4], seed=4)
    seen: list[dict] = []
    real = methods.METHODS["synflow"]

    def recording(inp):
        seen.append({k: v.clone() for k, v in inp.mask.items()})
        out = real(inp)
        for k, m in inp.mask.items():  # pruned weights score exactly 0
            assert bool((out[k][~m] == 0).all())
        return out

    monkeypatch.setitem(methods.METHODS, "synflow", recording)
    n, keep = 5, 20
    final = compute_mask("synflow", _inputs(net, input_shape=(10,)), [keep], "global", iterations=n)
    seen.append(final)
    N = 80 + 48 + 24
    counts = [sum(int(m.sum()) for m in s.values()) for s in seen]
    assert counts == [N] + [round(N * (keep / N) ** (r / n)) for r in range(1, n)] + [keep]
    for a, b in zip(seen, seen[1:]):  # every round's mask within the previous one
        assert all(bool((b[k] <= a[k]).all()) for k in a)


def test_round_counts_linear_and_exponential():
    assert round_counts([100], [10], 1, 2, "exponential") == [round(100 * 0.1 ** 0.5)]
    assert round_counts([100], [10], 1, 3, "linear") == [70]
    assert round_counts([100], [10], 3, 3, "linear") == [10]


# ---- SNIP -----------------------------------------------------------------------------------


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(5, 3, bias=False).double()


def test_snip_is_the_connection_sensitivity():
    net = _linear()
    x = torch.randn(7, 5, dtype=torch.float64)
    x[:, 2] = 0.0  # feature 2 is always zero: its weights get no gradient
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    inp = _inputs(net, batch=(x, y))
    s = snip(inp)["weight"]
    # independent: |dL/dc| at c = 1 for w_eff = c * theta
    c = torch.ones(3, 5, dtype=torch.float64, requires_grad=True)
    loss = nn.functional.cross_entropy(x @ (c * net.weight.detach()).T, y)
    (dc,) = torch.autograd.grad(loss, [c])
    torch.testing.assert_close(s, dc.abs(), rtol=1e-12, atol=1e-15)
    mask = compute_mask("snip", inp, [12], "global")["weight"]
    assert int(mask.sum()) == 12 and not bool(mask[:, 2].any())  # the dead feature's weights go first


# ---- GraSP ----------------------------------------------------------------------------------


def test_grasp_hessian_gradient_product_matches_finite_differences():
    net = _linear(1)
    x, y = torch.randn(9, 5, dtype=torch.float64), torch.tensor([0, 1, 2] * 3)
    T = 3.0
    prod = grasp_products(_inputs(net, batch=(x, y), temperature=T))["weight"]
    theta = net.weight.detach()

    def grad_at(w: torch.Tensor) -> torch.Tensor:
        w = w.clone().requires_grad_()
        return torch.autograd.grad(nn.functional.cross_entropy(x @ w.T / T, y), [w])[0]

    g, eps = grad_at(theta), 1e-6
    hg = (grad_at(theta + eps * g) - grad_at(theta - eps * g)) / (2 * eps)
    # central differences: error O(eps^2 |g|^3) plus rounding ~ 1e-16 / eps relative
    torch.testing.assert_close(prod, theta * hg, rtol=1e-6, atol=1e-12)


def test_grasp_sign_on_a_least_squares_closed_form():
    torch.manual_seed(2)  # a draw where theta*Hg has large positive and negative entries
    n, d = 20, 8
    X = torch.randn(n, d, dtype=torch.float64)
    theta = torch.randn(d, dtype=torch.float64)
    yv = torch.randn(n, dtype=torch.float64)
    net = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(theta[None])

    def lsq(out, target):
        return 0.5 * ((out.squeeze(1) - target) ** 2).mean()

    inp = _inputs(net, batch=(X, yv), temperature=1.0, loss=lsq)
    g = X.T @ (X @ theta - yv) / n
    s = (theta * ((X.T @ X / n) @ g))  # theta * Hg, closed form
    keep = 3
    top = set(torch.argsort(s, descending=True)[:keep].tolist())
    top_abs = set(torch.argsort(s.abs(), descending=True)[:keep].tolist())
    low = set(torch.argsort(s)[:keep].tolist())
    got = {name: set(compute_mask(name, inp, [keep], "global")["weight"][0].nonzero().squeeze(1).tolist())
           for name in ("grasp", "grasp_abs")}
    inverted = set(compute_mask("grasp", inp, [keep], "global", invert=True)["weight"][0].nonzero().squeeze(1).tolist())
    assert got["grasp"] == top and got["grasp_abs"] == top_abs and inverted == low
    assert len({frozenset(top), frozenset(top_abs), frozenset(low)}) == 3  # the three masks differ


# ---- the selector: exact counts, ties, inversion, no revival -----------------------------


def test_select_exact_counts_with_ties_and_scale_invariance():
    mask = {"a": torch.ones(4, 5, dtype=torch.bool), "b": torch.ones(6, dtype=torch.bool)}
    scores = {"a": torch.zeros(4, 5), "b": torch.zeros(6)}  # all tied
    out = select(scores, mask, [7], "global")
    assert sum(int(m.sum()) for m in out.values()) == 7
    # ties go by position: the smaller flat index is removed first, so the last 7 stay
    assert out["b"].all() and int(out["a"].sum()) == 1 and bool(out["a"].reshape(-1)[-1])
    torch.manual_seed(0)
    scores = {"a": torch.randn(4, 5), "b": torch.randn(6)}
    base = select(scores, mask, [9], "global")
    scaled = select({k: v * 123.4 for k, v in scores.items()}, mask, [9], "global")
    assert all(torch.equal(base[k], scaled[k]) for k in mask)
    lay = select(scores, mask, [5, 2], "layerwise")
    assert (int(lay["a"].sum()), int(lay["b"].sum())) == (5, 2)


def test_invert_keeps_the_lowest_scores():
    torch.manual_seed(1)
    s = torch.randn(50, dtype=torch.float64)
    out = select({"w": s}, {"w": torch.ones(50, dtype=torch.bool)}, [10], "global", invert=True)["w"]
    assert set(out.nonzero().squeeze(1).tolist()) == set(torch.argsort(s)[:10].tolist())


def test_pruned_weights_are_never_revived():
    alive = torch.ones(10, dtype=torch.bool)
    alive[:4] = False
    scores = torch.arange(10, dtype=torch.float64)
    scores[:4] = 1e9  # the highest scores sit on dead weights
    out = select({"w": scores}, {"w": alive}, [3], "global")["w"]
    assert out.tolist() == [False] * 7 + [True] * 3
    with pytest.raises(ValueError, match="cannot keep"):
        select({"w": scores}, {"w": alive}, [7], "global")


# ---- IMP's criteria (Zhou et al. 2019) -------------------------------------------------------


def test_magnitude_increase_keeps_the_largest_growth():
    torch.manual_seed(2)
    w_k = {"w": torch.randn(30)}
    w_t = {"w": torch.randn(30)}
    mask = {"w": torch.ones(30, dtype=torch.bool)}
    mask["w"][:5] = False
    from trainers.methods.magnitude import criterion_mask

    out = criterion_mask(w_t, mask, PruneConfig(fraction=0.2, criterion="magnitude_increase"), w_k)["w"]
    growth = (w_t["w"].abs() - w_k["w"].abs()).numpy()
    alive = list(range(5, 30))
    keep = 25 - math.ceil(0.2 * 25)
    expect = sorted(alive, key=lambda i: -growth[i])[:keep]
    assert sorted(out.nonzero().squeeze(1).tolist()) == sorted(expect)
    same = prune(w_t, mask, PruneConfig(fraction=0.2))["w"]  # large_final: |w_T|
    assert sorted(same.nonzero().squeeze(1).tolist()) == sorted(sorted(alive, key=lambda i: -abs(float(w_t["w"][i])))[:keep])


# ---- the job head: scoring batch, determinism, counts, ablations ---------------------------


CFG = TrainConfig(model="mlp_300_100", data=DataConfig(name="digits"), iterations=20, batch_size=64, eval_train_examples=128)


def _model(seed: int = 0):
    from trainers.models import build_model

    return build_model("mlp_300_100", (1, 8, 8), 10, seed=seed)


_DATA_CACHE: dict = {}  # digits loaded once for the module


def _open():
    from trainers.data.sources import open_data

    return open_data(CFG.data, torch.device("cpu"), _DATA_CACHE)


def test_scoring_batch_is_class_balanced_and_seeded():
    from trainers.methods.job import scoring_batch

    data = _open()
    x, y = scoring_batch(data, data_seed=0, k=0, per_class=3)
    assert y.tolist() == [c for c in range(10) for _ in range(3)] and x.shape[0] == 30
    x2, _ = scoring_batch(data, data_seed=0, k=0, per_class=3)
    x3, _ = scoring_batch(data, data_seed=1, k=0, per_class=3)
    assert torch.equal(x, x2) and not torch.equal(x, x3)
    with pytest.raises(ValueError, match="examples_per_class"):
        scoring_batch(data, 0, 0, per_class=10_000)


def _mask(job: TrainJob, model=None):
    from trainers.checkpoint import state_dict_cpu
    from trainers.methods.job import mask_at_init

    model = model or _model()
    return mask_at_init(job, state_dict_cpu(model), model, _open)


def _job(method: str, keep=(5000,), **kw) -> TrainJob:
    a = AtInitConfig(method=method, keep=keep, examples_per_class=5 if method in ("snip", "grasp") else 0,
                     temperature=200.0 if method == "grasp" else 0.0, iterations=5 if method == "synflow" else 1)
    a = dataclasses.replace(a, **{k: v for k, v in kw.items() if k in {f.name for f in dataclasses.fields(AtInitConfig)}})
    return TrainJob(train=CFG, init_seed=0, data_seed=kw.get("data_seed", 0), at_init=a, prune_seed=kw.get("prune_seed", 0))


def test_the_mask_is_a_pure_function_of_its_inputs():
    for method in ("snip", "synflow", "random_init"):
        a, b = _mask(_job(method)), _mask(_job(method))
        assert all(torch.equal(a[k], b[k]) for k in a), method
    snip0, snip1 = _mask(_job("snip")), _mask(_job("snip", data_seed=1))
    assert any(not torch.equal(snip0[k], snip1[k]) for k in snip0)  # another scoring batch
    sf0, sf1 = _mask(_job("synflow")), _mask(_job("synflow", data_seed=1))
    assert all(torch.equal(sf0[k], sf1[k]) for k in sf0)  # SynFlow is data-free


def test_counts_equal_imps_planned_counts_at_every_level():
    from trainers.prune_counts import planned_layer_remaining, planned_remaining

    model = _model()
    sizes = {k: v.numel() for k, v in full_mask(model).items()}
    totals = planned_remaining(sizes, PruneConfig(fraction=0.3), 4)
    for level in range(1, 5):
        m = _mask(_job("magnitude_init", keep=(totals[level],)), model)
        assert sum(int(v.sum()) for v in m.values()) == totals[level]
        per = planned_layer_remaining(sizes, 0.3, level)
        m = _mask(_job("snip", keep=tuple(per), scope="layerwise"), model)
        assert [int(v.sum()) for v in m.values()] == per


def test_ablations_shuffle_and_invert():
    base = _mask(_job("snip"))
    shuffled = _mask(_job("snip", shuffle=True, prune_seed=7))
    assert [int(v.sum()) for v in shuffled.values()] == [int(v.sum()) for v in base.values()]
    assert any(not torch.equal(base[k], shuffled[k]) for k in base)
    again = _mask(_job("snip", shuffle=True, prune_seed=7))
    assert all(torch.equal(again[k], shuffled[k]) for k in again)
    assert all(torch.equal(shuffled[k], shuffle_within_layers(base, 7)[k]) for k in base)
    inverted = _mask(_job("magnitude_init", invert=True))
    model = _model()
    flat = torch.cat([model.state_dict()[k].abs().reshape(-1) for k in inverted])
    kept = torch.cat([v.reshape(-1) for v in inverted.values()])
    assert int(kept.sum()) == 5000 and float(flat[kept].max()) <= float(flat[~kept].min())


def test_reinit_ablation_keeps_the_mask_with_fresh_weights(tmp_path):
    from trainers import checkpoint
    from trainers.checkpoint import state_dict_cpu
    from trainers.data.ondisk import describe
    from trainers.train import starting_point

    model = _model()
    w0 = tmp_path / "w_0.pt"
    checkpoint.save(state_dict_cpu(model), str(w0))
    job = _job("snip")
    info = describe(CFG.data)
    paths = TrainPaths(out_dir=str(tmp_path), rewind_weights=str(w0))
    w, m = starting_point(job, paths, _model(), info)
    wr, mr = starting_point(dataclasses.replace(job, reinit_seed=11), paths, _model(), info)
    assert all(torch.equal(m[k], mr[k]) for k in m)
    wide = "hidden.0.weight"  # 300 x 64: the std of a fresh draw within 10% of W_0's
    assert not torch.equal(w[wide], wr[wide])
    assert float(wr[wide].std()) == pytest.approx(float(w[wide].std()), rel=0.1)


def test_random_reinit_signs_keeps_the_signs_of_w_k(tmp_path):
    from trainers import checkpoint
    from trainers.checkpoint import state_dict_cpu
    from trainers.data.ondisk import describe
    from trainers.train import starting_point

    wk, parent = _model(0), _model(3)
    for name, mdl in (("w_0.pt", wk), ("weights.pt", parent)):
        checkpoint.save(state_dict_cpu(mdl), str(tmp_path / name))
    checkpoint.save(full_mask(parent), str(tmp_path / "mask.pt"))
    paths = TrainPaths(out_dir=str(tmp_path), parent_weights=str(tmp_path / "weights.pt"),
                       parent_mask=str(tmp_path / "mask.pt"), rewind_weights=str(tmp_path / "w_0.pt"))
    job = TrainJob(train=CFG, init_seed=0, data_seed=0, prune=PruneConfig(fraction=0.5), reinit_seed=9, reinit_keep_signs=True)
    w, m = starting_point(job, paths, _model(), describe(CFG.data))
    fresh = _model(9).state_dict()
    for k in m:
        assert torch.equal(w[k].abs(), fresh[k].abs())
        assert torch.equal(torch.sign(w[k]), torch.where(wk.state_dict()[k] < 0, -1.0, 1.0))
    assert torch.equal(w["fc.bias"], fresh["fc.bias"])  # not a prunable tensor: the fresh draw as it is


# ---- weight correlation ------------------------------------------------------------------------


def test_weight_correlation_is_pearson_over_the_kept_weights():
    torch.manual_seed(3)
    start = {"a": torch.randn(6, 7), "b": torch.randn(11)}
    final = {k: v * 0.5 + 0.3 * torch.randn_like(v) for k, v in start.items()}
    mask = {k: torch.rand(v.shape) > 0.4 for k, v in start.items()}
    overall, rows = layer_rows(start, final, mask)
    xs = np.concatenate([start[k][mask[k]].numpy() for k in mask])
    ys = np.concatenate([final[k][mask[k]].numpy() for k in mask])
    assert overall == pytest.approx(float(np.corrcoef(xs, ys)[0, 1]), rel=1e-9)
    for r in rows:
        assert r.kept == int(mask[r.layer].sum()) and r.total == start[r.layer].numel()
        expect = np.corrcoef(start[r.layer][mask[r.layer]].numpy(), final[r.layer][mask[r.layer]].numpy())[0, 1]
        assert r.weight_correlation == pytest.approx(float(expect), rel=1e-9)
    assert pearson(torch.ones(5), torch.randn(5)) is None and pearson(torch.ones(1), torch.ones(1)) is None
