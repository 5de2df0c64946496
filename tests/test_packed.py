"""Packed training (K networks as one stacked network) against the oracle: the same jobs trained one by one."""
from __future__ import annotations

import dataclasses
import math
import os
import shutil

import pytest
import torch

from conftest import masked_snapshots
from trainers import checkpoint
from trainers.jobs import DataConfig, OptimizerConfig, PruneConfig, ScheduleConfig, TrainConfig, TrainJob, TrainPaths
from trainers.packed import packing_problem, train_packed
from trainers.runtime import Runtime
from trainers.train import train

torch.set_num_threads(1)
RT = Runtime(device=torch.device("cpu"))

MLP = TrainConfig(
    model="mlp_300_100", data=DataConfig(name="digits"), iterations=30, batch_size=32,
    optimizer=OptimizerConfig(lr=0.05, momentum=0.9, weight_decay=1e-4),
    schedule=ScheduleConfig(name="step", milestones=(20,), gamma=0.1), eval_every=10, eval_train_examples=128,
)
# A conv net with BatchNorm (running statistics must stay per member) on tiny synthetic images.
CONV = TrainConfig(
    model="cifar_resnet_20",
    data=DataConfig(name="synthetic", image_size=8, num_classes=4, num_train=128, num_test=32, augment=False),
    iterations=8, batch_size=16, eval_every=4, eval_train_examples=32,
    optimizer=OptimizerConfig(lr=0.05, momentum=0.9, weight_decay=5e-4, decay_norm_and_bias=False),
)


def close(a: dict, b: dict, atol: float, rtol: float = 0.0) -> None:
    assert list(a) == list(b)  # same tensors, in a single model's state_dict order
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], atol=atol, rtol=rtol), (k, (a[k] - b[k]).abs().max())
        else:
            assert torch.equal(a[k], b[k]), k


def same_results(packed, single, atol: float, rtol: float = 0.0) -> None:
    for p, s in zip(packed, single):
        close(checkpoint.load_weights(p.weights_path), checkpoint.load_weights(s.weights_path), atol, rtol)
        assert checkpoint.load_mask(p.mask_path).keys() == checkpoint.load_mask(s.mask_path).keys()
        assert all(torch.equal(a, b) for a, b in zip(checkpoint.load_mask(p.mask_path).values(),
                                                     checkpoint.load_mask(s.mask_path).values()))
        assert [(m.iteration, m.split) for m in p.metrics] == [(m.iteration, m.split) for m in s.metrics]
        for mp, ms in zip(p.metrics, s.metrics):
            assert mp.loss == pytest.approx(ms.loss, rel=1e-3, abs=1e-4)
        assert p.density == s.density and p.flops_fraction == s.flops_fraction  # (the masks are exact)
        assert p.saved_weights.keys() == s.saved_weights.keys()
        for it in p.saved_weights:
            close(checkpoint.load_weights(p.saved_weights[it]), checkpoint.load_weights(s.saved_weights[it]), atol, rtol)


def test_packed_mlp_equals_one_by_one(tmp_path):
    jobs = [TrainJob(train=MLP, init_seed=s, data_seed=10 + s, save_iters=(0, 10)) for s in range(3)]
    paths = [TrainPaths(out_dir=str(tmp_path / f"p{i}")) for i in range(3)]
    packed = train_packed(jobs, paths, RT, strategy="stacked")
    single = [train(j, TrainPaths(out_dir=str(tmp_path / f"s{i}")), RT) for i, j in enumerate(jobs)]
    same_results(packed, single, atol=1e-5, rtol=1e-4)
    # The members really differ (init and data order), and they learned.
    w = [checkpoint.load_weights(r.weights_path)["fc.weight"] for r in packed]
    assert not torch.allclose(w[0], w[1])
    assert all(r.test_accuracy > 0.7 for r in packed)


def _pruned_children(tmp_path, cfg: TrainConfig, end_iter: int | None = None):
    """Two branch children of level 1 (same pruned start, other data orders) and a second lineage
    pruned layerwise: three different masks, BatchNorm statistics that must stay apart."""
    dense = train(TrainJob(train=cfg, init_seed=0, data_seed=0, save_iters=(2,)), TrainPaths(out_dir=str(tmp_path / "d")), RT)
    level = TrainJob(train=cfg, init_seed=0, data_seed=1, start_iter=2, end_iter=end_iter, prune=PruneConfig(fraction=0.5))
    jobs = [level, dataclasses.replace(level, data_seed=2),
            dataclasses.replace(level, prune=PruneConfig("magnitude_layerwise", 0.7))]

    def paths(tag: str, i: int) -> TrainPaths:
        return TrainPaths(out_dir=str(tmp_path / f"{tag}{i}"), parent_weights=dense.weights_path,
                          parent_mask=dense.mask_path, rewind_weights=dense.saved_weights[2])

    packed = train_packed(jobs, [paths("p", i) for i in range(3)], RT, strategy="stacked")
    single = [train(j, paths("s", i), RT) for i, j in enumerate(jobs)]
    return dense, packed, single


def test_packed_pruned_conv_children_with_batchnorm_equal_one_by_one(tmp_path):
    """Six steps in float64. Packed and one-by-one training differ only in the order in which
    sums are rounded (grouped against separate convolutions). To first order the divergence of
    two such runs is proportional to the unit roundoff u: in float32 (u = 6e-8) these six steps
    of a tiny chaotic net ended 3e-3 apart, an amplification of 5e4 per unit of u; in float64
    (u = 1.1e-16) the same amplification gives 6e-12. atol 1e-9 leaves a 100x margin and is a
    million times below what a shared BatchNorm statistic, a member's wrong mask or data stream
    produce (differences of 1e-3 and more)."""
    _, packed, single = _pruned_children(tmp_path, dataclasses.replace(CONV, precision="fp64"))
    same_results(packed, single, atol=1e-9)
    states = [checkpoint.load_weights(r.weights_path) for r in packed]
    assert states[0]["conv.weight"].dtype == torch.float64
    assert not torch.allclose(states[0]["bn.running_mean"], states[1]["bn.running_mean"])
    for r, state in zip(packed, states):
        for name, m in checkpoint.load_mask(r.mask_path).items():
            assert torch.count_nonzero(state[name][~m]) == 0, name


def test_packed_conv_children_one_fp32_step_equals_one_by_one(tmp_path):
    """One step in float32, within a worst-case rounding bound. A float32 sum of n terms is off
    by at most n*u times the sum of their magnitudes (u = 2**-24); every number of one step
    passes through at most ~21 layers (19 convolutions, BatchNorm, the head) of reductions of at
    most 1024 terms (batch 16 x 8 x 8 positions for a weight gradient; 64 x 9 for a
    convolution), so each tensor's change over the step (w1 - w0: the update, or BatchNorm's
    statistics moving) is off by at most 21 * 1024 * u of its size, plus one rounding of w0.

    That bound uses the step's size in place of the sum of the magnitudes of its terms, which
    holds only where the terms do not cancel. BatchNorm's affine gradients are sums of dy * x_hat
    and of dy over a channel, and x_hat has zero mean: they cancel by construction (measured: a
    bn.weight step 1.1e-2 whose float32 result differs by 2.7e-5 between two summation orders,
    2x the bound). Those tensors are left to the float64 test above, which checks them to 1e-9."""
    dense, packed, single = _pruned_children(tmp_path, CONV, end_iter=3)
    rel = 21 * 1024 * 2.0**-24
    start = checkpoint.load_weights(dense.saved_weights[2])
    for p, s in zip(packed, single):
        a, b = checkpoint.load_weights(p.weights_path), checkpoint.load_weights(s.weights_path)
        assert list(a) == list(b)
        bn_affine = {f"{m[: -len('running_mean')]}{w}" for m in a if m.endswith("running_mean") for w in ("weight", "bias")}
        assert bn_affine  # the model has BatchNorm: the exclusion below is of real tensors
        for k in a:
            if not a[k].is_floating_point():
                assert torch.equal(a[k], b[k]), k
                continue
            if k in bn_affine:
                continue
            step = (b[k] - start[k]).abs().max().item()
            tol = rel * step + 2.0**-24 * start[k].abs().max().item()
            assert (a[k] - b[k]).abs().max().item() <= tol, (k, (a[k] - b[k]).abs().max().item(), tol)
        ma, mb = checkpoint.load_mask(p.mask_path), checkpoint.load_mask(s.mask_path)
        assert ma.keys() == mb.keys() and all(torch.equal(ma[n], mb[n]) for n in ma)


def test_interrupted_pack_resumes_packed_or_one_by_one(tmp_path):
    # float64: the comparison is exact to rounding (see the test above for the 1e-9 bound)
    jobs = [TrainJob(train=dataclasses.replace(CONV, precision="fp64"), init_seed=s, data_seed=s) for s in range(2)]
    reference = [train(j, TrainPaths(out_dir=str(tmp_path / f"ref{i}")), RT) for i, j in enumerate(jobs)]

    class Interrupt(Exception):
        pass

    def crash(row):
        if row.iteration == 4 and row.split == "train":
            raise Interrupt

    paths = [TrainPaths(out_dir=str(tmp_path / f"p{i}"), checkpoint_every_iters=3) for i in range(2)]
    with pytest.raises(Interrupt):
        train_packed(jobs, paths, RT, on_metrics=[None, crash], strategy="stacked")
    # The checkpoints are train()'s own format: member 0 resumes alone, the pack resumes packed.
    shutil.copytree(paths[0].out_dir, tmp_path / "alone")
    alone = train(jobs[0], dataclasses.replace(paths[0], out_dir=str(tmp_path / "alone")), RT)
    assert alone.resumed_from == 3
    resumed = train_packed(jobs, paths, RT, strategy="stacked")
    assert [r.resumed_from for r in resumed] == [3, 3]
    same_results(resumed, reference, atol=1e-9)
    same_results([alone], reference[:1], atol=1e-9)


def _blown_up_start(tmp_path, seed: int, scale: float) -> str:
    """W0 of `seed` with every weight matrix times `scale`, as a starting-weights file: a member
    that starts elsewhere than its siblings, as a branch's children from different W_k do."""
    from trainers.models import build_model

    state = build_model(MLP.model, (64,), 10, seed=seed).state_dict()
    path = str(tmp_path / f"blown_{seed}_{scale:g}.pt")
    checkpoint.save({n: t * scale if t.dim() > 1 else t for n, t in state.items()}, path)
    return path


def _same_as_alone(p, s) -> None:
    """A packed member's result against train()'s for the same job alone, field by field: what
    may differ is how and where it ran (strategy, wall time, paths) and float rounding (the
    metric tolerance of `same_results`; NaN where train() has NaN)."""
    def same(a, b, what):
        if isinstance(a, float) and isinstance(b, float):
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-3, abs=1e-4), (what, a, b)
        else:
            assert a == b, (what, a, b)

    a, b = dataclasses.asdict(p), dataclasses.asdict(s)
    assert a.keys() == b.keys()
    for name in a.keys() - {"strategy", "wall_seconds", "weights_path", "mask_path", "saved_weights", "metrics", "layers"}:
        same(a[name], b[name], name)
    assert a["saved_weights"].keys() == b["saved_weights"].keys()
    for what in ("metrics", "layers"):
        assert len(a[what]) == len(b[what]), what
        for ra, rb in zip(a[what], b[what]):
            assert ra.keys() == rb.keys()
            for name in ra:
                same(ra[name], rb[name], f"{what}.{name}")


# Divergence, deterministically: a member starts from its W0 with every weight matrix 100x
# (`_blown_up_start`), logits 1e6x their scale. Whether the weights then overflow to NaN or the
# ReLUs die first (a dead network's loss stays finite) depends on the data order: (init 1,
# data 1) overflows at iteration 8 and (init 3, data 13) at 6, in float32 on a CPU, the same
# every run. The blow-up grows by orders of magnitude per step, so where it overflows does not
# hinge on the ulp-level differences between stacked and one-by-one sums: stacked and alone
# agreed on the iteration in all 32 cases of a scan when this was written (8 seeds, 2 members,
# float32 and float64).
DIVERGES = ((1, 1), (3, 13))  # (init seed, data seed) of a 100x start that overflows


def test_a_diverged_member_stops_like_train_and_its_siblings_train_on_untouched(tmp_path):
    """Member 1 diverges. Oracles: train() of that job alone (it stops right after its first
    non-finite loss and is evaluated there: the stacked member must record the same, field for
    field), the healthy members' one-by-one runs (the tolerance of
    test_packed_mlp_equals_one_by_one), and the same pack with member 1 healthy: the NaN slot
    must leave its siblings bitwise as they were (each member's arithmetic is its own slice)."""
    cfg = dataclasses.replace(MLP, eval_every=5)  # an evaluation before the stop: kept, as train() keeps it
    (i1, d1) = DIVERGES[0]
    jobs = [TrainJob(train=cfg, init_seed=s, data_seed=d, save_iters=(0, 5, 20)) for s, d in ((0, 10), (i1, d1), (2, 12))]
    blown = _blown_up_start(tmp_path, i1, 100.0)
    paths = [TrainPaths(out_dir=str(tmp_path / f"p{i}"), rewind_weights=blown if i == 1 else None) for i in range(3)]
    packed = train_packed(jobs, paths, RT, strategy="stacked")
    alone = [train(j, dataclasses.replace(p, out_dir=str(tmp_path / f"s{i}")), RT) for i, (j, p) in enumerate(zip(jobs, paths))]

    bad, ref = packed[1], alone[1]
    assert ref.nonfinite_iter is not None and 5 < ref.nonfinite_iter < 20, ref.nonfinite_iter  # mid-run, as meant
    assert (bad.nonfinite_iter, bad.end_iter) == (ref.nonfinite_iter, ref.nonfinite_iter + 1)
    assert bad.strategy == "stacked" and math.isnan(bad.test_loss)  # the reporting is kept
    assert [m.iteration for m in bad.metrics if m.split == "test"] == [0, 5, bad.end_iter]
    assert set(bad.saved_weights) == {0, 5}  # no rewinding point past the stop
    _same_as_alone(bad, ref)
    assert not os.path.exists(os.path.join(paths[1].out_dir, "checkpoint.pt"))
    same_results([packed[0], packed[2]], [alone[0], alone[2]], atol=1e-5, rtol=1e-4)
    for i in (0, 2):
        assert packed[i].nonfinite_iter is None and packed[i].end_iter == cfg.iterations
        _same_as_alone(packed[i], alone[i])

    healthy = train_packed(jobs, [dataclasses.replace(p, out_dir=str(tmp_path / f"h{i}"), rewind_weights=None)
                                  for i, p in enumerate(paths)], RT, strategy="stacked")
    assert healthy[1].nonfinite_iter is None  # (the comparison below is against a pack without a NaN slot)
    for i in (0, 2):
        a, b = checkpoint.load_weights(packed[i].weights_path), checkpoint.load_weights(healthy[i].weights_path)
        assert all(torch.equal(a[n], b[n]) for n in a), i
        assert [dataclasses.astuple(m) for m in packed[i].metrics] == [dataclasses.astuple(m) for m in healthy[i].metrics]


def test_a_pack_whose_members_all_diverged_stops_early(tmp_path):
    """Both members diverge, at different iterations: each stops as train() stops it alone, and
    the pack stops with the later one, long before train.iterations (no evaluation after it)."""
    jobs = [TrainJob(train=MLP, init_seed=s, data_seed=d) for s, d in DIVERGES]
    paths = [TrainPaths(out_dir=str(tmp_path / f"p{i}"), rewind_weights=_blown_up_start(tmp_path, s, 100.0))
             for i, (s, _) in enumerate(DIVERGES)]
    rows: list = []
    packed = train_packed(jobs, paths, RT, on_metrics=[rows.append, rows.append], strategy="stacked")
    alone = [train(j, dataclasses.replace(p, out_dir=str(tmp_path / f"s{i}")), RT) for i, (j, p) in enumerate(zip(jobs, paths))]
    for p, s in zip(packed, alone):
        assert s.nonfinite_iter is not None and (p.nonfinite_iter, p.end_iter) == (s.nonfinite_iter, s.end_iter)
        _same_as_alone(p, s)
    assert packed[0].end_iter != packed[1].end_iter  # one stopped while the other trained on
    last = max(r.end_iter for r in packed)
    assert last < MLP.iterations - 10 and max(r.iteration for r in rows) == last  # the pack stopped there


def test_auto_on_cpu_trains_one_by_one_and_keeps_finished_members(tmp_path):
    jobs = [TrainJob(train=MLP, init_seed=s, data_seed=s) for s in range(2)]
    paths = [TrainPaths(out_dir=str(tmp_path / f"p{i}")) for i in range(2)]
    done = train(jobs[0], paths[0], RT)
    stamp = os.stat(done.weights_path).st_mtime_ns
    results = train_packed(jobs, paths, RT)  # auto: one by one on a CPU
    assert results[0] == done and os.stat(done.weights_path).st_mtime_ns == stamp  # not retrained
    alone = train(jobs[1], TrainPaths(out_dir=str(tmp_path / "alone")), RT)
    a, b = checkpoint.load_weights(results[1].weights_path), checkpoint.load_weights(alone.weights_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a pack trained one by one says so: never reported as packed
    fresh = train_packed(jobs, [TrainPaths(out_dir=str(tmp_path / f"f{i}")) for i in range(2)], RT)
    assert [r.strategy for r in fresh] == ["sequential", "sequential"]


@pytest.mark.parametrize("opt", [OptimizerConfig(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
                                 OptimizerConfig(name="adam", lr=1e-2, weight_decay=1e-3)])
def test_pruned_weights_stay_exactly_zero_mid_run(tmp_path, opt):
    """The loops mask gradients only (no weight mask after each step): pruned weights must
    still be exact zeros at every saved point, packed or not, with momentum, Nesterov, Adam
    and weight decay all active."""
    cfg = dataclasses.replace(MLP, optimizer=opt, iterations=20, eval_every=0)
    dense = train(TrainJob(train=cfg, init_seed=0, data_seed=0, save_iters=(5,)), TrainPaths(out_dir=str(tmp_path / "d")), RT)
    job = TrainJob(train=cfg, init_seed=0, data_seed=1, start_iter=5, save_iters=(12,), prune=PruneConfig(fraction=0.6))

    def paths(tag: str) -> TrainPaths:
        return TrainPaths(out_dir=str(tmp_path / tag), parent_weights=dense.weights_path, parent_mask=dense.mask_path,
                          rewind_weights=dense.saved_weights[5])

    runs = [train(job, paths("single"), RT),
            *train_packed([job, dataclasses.replace(job, data_seed=2)], [paths("p0"), paths("p1")], RT, strategy="stacked")]
    start = checkpoint.load_weights(dense.saved_weights[5])
    for path, w, mask in masked_snapshots(runs, 12):
        for name, m in mask.items():
            assert torch.count_nonzero(w[name][~m]) == 0, (path, name)
            assert not torch.equal(w[name][m], start[name][m]), (path, name)  # the rest trained


def test_unpackable_jobs_are_refused_with_the_reason(tmp_path):
    a = TrainJob(train=MLP, init_seed=0, data_seed=0)
    assert packing_problem([a, dataclasses.replace(a, data_seed=1, init_seed=3)]) is None
    assert "TrainConfig" in packing_problem([a, dataclasses.replace(a, train=dataclasses.replace(MLP, batch_size=16))])
    assert "trains [5, 30)" in packing_problem([a, dataclasses.replace(a, start_iter=5)])
    ft = dataclasses.replace(a, prune=PruneConfig(), retrain="finetune", start_iter=5)
    assert "learning-rate" in packing_problem([ft, dataclasses.replace(ft, retrain="rewind")])
    with pytest.raises(ValueError, match="TrainConfig"):
        train_packed([a, dataclasses.replace(a, train=dataclasses.replace(MLP, iterations=20))],
                     [TrainPaths(out_dir=str(tmp_path / f"x{i}")) for i in range(2)], RT)
    with pytest.raises(ValueError, match="share an out_dir"):
        train_packed([a, a], [TrainPaths(out_dir=str(tmp_path / "same"))] * 2, RT)


def test_bf16_packs_stacked_and_each_member_stays_closest_to_its_own_one_by_one_run(tmp_path):
    """bf16 autocast (the GPU default; vmap packing fell back to one-by-one there). bf16 keeps 8
    bits of mantissa, so packed and one-by-one runs drift apart within a few steps; what must
    hold: the start is exact (evaluated on the same weights), masks are exact, and each packed
    member is nearer its own one-by-one run than its sibling (another data order) is."""
    cfg = dataclasses.replace(CONV, precision="bf16")
    _, packed, single = _pruned_children(tmp_path, cfg)
    assert {r.strategy for r in packed} == {"stacked"} and {r.strategy for r in single} == {"single"}
    for p, s in zip(packed, single):
        assert (p.metrics[0].loss, p.metrics[0].accuracy) == (s.metrics[0].loss, s.metrics[0].accuracy)
        ma, mb = checkpoint.load_mask(p.mask_path), checkpoint.load_mask(s.mask_path)
        assert all(torch.equal(ma[n], mb[n]) for n in ma)
    w = [checkpoint.load_weights(r.weights_path)["conv.weight"] for r in packed + single]
    for k, sibling in ((0, 1), (1, 0)):
        assert (w[k] - w[3 + k]).norm() < (w[k] - w[3 + sibling]).norm()


class _ChannelFlip(torch.nn.Module):
    """A valid single network whose forward mixes channels outside conv/BatchNorm/linear."""

    def __init__(self, shape, classes):
        super().__init__()
        self.conv = torch.nn.Conv2d(shape[0], 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * shape[1] * shape[2], classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x).flip(1), 1))


class _LayerNormNet(torch.nn.Module):
    def __init__(self, shape, classes):
        super().__init__()
        self.norm = torch.nn.LayerNorm(shape[-1])
        self.fc = torch.nn.Linear(shape[0] * shape[1] * shape[2], classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.norm(x), 1))


@pytest.mark.parametrize("model, words", [(_ChannelFlip, "mixes channels"), (_LayerNormNet, "LayerNorm")])
def test_a_model_that_does_not_stack_is_refused_with_the_reason(tmp_path, monkeypatch, model, words):
    from trainers import models
    from trainers.stacked import stack_problem

    monkeypatch.setitem(models.MODELS, "odd", model)
    assert words in stack_problem("odd", (3, 8, 8), 4)
    cfg = dataclasses.replace(CONV, model="odd")
    jobs = [TrainJob(train=cfg, init_seed=s, data_seed=s) for s in range(2)]
    with pytest.raises(ValueError, match=words):
        train_packed(jobs, [TrainPaths(out_dir=str(tmp_path / f"x{i}")) for i in range(2)], Runtime(device=torch.device("cpu")),
                     strategy="stacked")
    assert stack_problem("cifar_resnet_20", (3, 8, 8), 4) is None and stack_problem("mlp_300_100", (64,), 10) is None
