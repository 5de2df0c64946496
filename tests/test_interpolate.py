"""Linear interpolation between two networks: endpoints, self-pair, a pair with a known barrier."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from trainers import checkpoint
from trainers.api import run_interpolate_job, run_train_job
from trainers.data.sources import open_data
from trainers.evaluate import evaluate
from trainers.interpolate import barrier, recompute_bn_stats
from trainers.jobs import DataConfig, InterpolateJob, InterpolatePaths, OptimizerConfig, TrainConfig, TrainJob, TrainPaths
from trainers.models import build_model
from trainers.runtime import Runtime

torch.set_num_threads(1)
CPU = torch.device("cpu")
CFG = TrainConfig(model="mlp_300_100", data=DataConfig(name="digits"), iterations=40, batch_size=32,
                  optimizer=OptimizerConfig(lr=0.05, momentum=0.9))
RT = Runtime(device=CPU)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    a = run_train_job(TrainJob(train=CFG, init_seed=0, data_seed=1), TrainPaths(out_dir=str(root / "a")), RT)
    b = run_train_job(TrainJob(train=CFG, init_seed=0, data_seed=2), TrainPaths(out_dir=str(root / "b")), RT)
    return root, a, b


def endpoint_eval(weights_path, split, limit=None):
    data = open_data(CFG.data, CPU, RT.data_cache)
    model = build_model(CFG.model, data.info.input_shape, data.info.num_classes, seed=0)
    model.load_state_dict(checkpoint.load_weights(weights_path))
    loss, acc = evaluate(model, data.eval_batches(split, 512, limit), CPU, "fp32")
    return loss, 1 - acc


def test_endpoints_reproduce_separate_evaluations(pair):
    root, a, b = pair
    job = InterpolateJob(train=CFG, num_alphas=5, train_examples=300)
    res = run_interpolate_job(job, InterpolatePaths(a.weights_path, b.weights_path, a.mask_path), RT)
    for split, limit in (("test", None), ("train", 300)):
        rows = [r for r in res.rows if r.split == split]
        assert [r.alpha for r in rows] == pytest.approx([0, 0.25, 0.5, 0.75, 1])
        assert (rows[0].loss, rows[0].error) == pytest.approx(endpoint_eval(a.weights_path, split, limit), abs=1e-12)
        assert (rows[-1].loss, rows[-1].error) == pytest.approx(endpoint_eval(b.weights_path, split, limit), abs=1e-12)
        inst = next(i for i in res.instability if i.split == split)
        errors = [r.error for r in rows]
        assert inst.barrier == pytest.approx(max(errors) - (errors[0] + errors[-1]) / 2)
        assert inst.max_error == max(errors) and inst.error_a == errors[0] and inst.error_b == errors[-1]


def test_barrier_of_a_network_with_itself_is_zero(pair):
    root, a, _ = pair
    res = run_interpolate_job(InterpolateJob(train=CFG, num_alphas=7, train_examples=200),
                              InterpolatePaths(a.weights_path, a.weights_path), RT)
    assert all(i.barrier == 0.0 for i in res.instability)
    assert len({r.error for r in res.rows if r.split == "test"}) == 1


def test_hand_built_pair_with_known_barrier(pair, tmp_path):
    """B is A with the last linear layer negated: theta(alpha)'s logits are (1 - 2 alpha) * A's.
    So alpha < 1/2 predicts like A, alpha > 1/2 like B, and alpha = 1/2 has all-zero logits,
    whose argmax is class 0: error(1/2) = 1 - (fraction of class 0)."""
    root, a, _ = pair
    wa = checkpoint.load_weights(a.weights_path)
    model = build_model(CFG.model, (64,), 10, seed=0)
    last = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    wb = dict(wa)
    wb[f"{last}.weight"], wb[f"{last}.bias"] = -wa[f"{last}.weight"], -wa[f"{last}.bias"]
    checkpoint.save(wb, tmp_path / "b.pt")
    res = run_interpolate_job(InterpolateJob(train=CFG, num_alphas=31, splits=("test",)),
                              InterpolatePaths(a.weights_path, str(tmp_path / "b.pt")), RT)
    data = open_data(CFG.data, CPU, RT.data_cache)
    labels = torch.cat([y for _, y in data.eval_batches("test", 512)])
    err_mid = 1 - (labels == 0).sum().item() / labels.numel()
    _, err_a = endpoint_eval(a.weights_path, "test")
    _, err_b = endpoint_eval(tmp_path / "b.pt", "test")
    expected_curve = [err_a] * 15 + [err_mid] + [err_b] * 15
    assert [r.error for r in res.rows] == pytest.approx(expected_curve, abs=1e-12)
    assert res.instability[0].barrier == pytest.approx(max(err_a, err_b, err_mid) - (err_a + err_b) / 2)
    assert barrier([0.1, 0.5, 0.3]) == pytest.approx(0.5 - 0.2)


def test_bn_reset_recomputes_the_statistics_of_the_network():
    cfg = DataConfig(name="synthetic", image_size=8, num_classes=4, num_train=64, num_test=32)
    data = open_data(cfg, CPU, {})
    model = build_model("cifar_resnet_20", data.info.input_shape, 4, seed=0)
    stream = data.train_stream(0, 16, 0)
    batches = [next(stream) for _ in range(3)]
    recompute_bn_stats(model, batches)
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        feats = first_conv(torch.cat([x for x, _ in batches]))
    assert torch.allclose(first_bn.running_mean, feats.mean(dim=(0, 2, 3)), atol=1e-5)
    assert int(first_bn.num_batches_tracked) == 3


def test_mismatched_pair_is_refused(pair, tmp_path):
    root, a, _ = pair
    wa = checkpoint.load_weights(a.weights_path)
    wrong = {k: v for k, v in list(wa.items())[:-1]}
    checkpoint.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="different tensors"):
        run_interpolate_job(InterpolateJob(train=CFG), InterpolatePaths(a.weights_path, str(tmp_path / "wrong.pt")), RT)
    with pytest.raises(ValueError, match="num_alphas"):
        run_interpolate_job(dataclasses.replace(InterpolateJob(train=CFG), num_alphas=1),
                            InterpolatePaths(a.weights_path, a.weights_path), RT)


def test_bn_reset_batches_are_at_the_evaluation_resolution():
    """Progressive resizing trains epoch 0 at min_res; the BatchNorm reset must see what
    evaluation sees: the evaluation side (issue 21, item 13)."""
    from trainers.interpolate import bn_reset_batches

    cfg = DataConfig(name="synthetic", image_size=64, num_classes=4, num_train=64, num_test=32,
                     min_res=32, max_res=64, start_ramp_epoch=0, end_ramp_epoch=4)
    data = open_data(cfg, CPU, {})
    first_train = next(data.train_stream(0, 16, 0))[0]
    assert first_train.shape[-1] == 32  # the premise: epoch 0 trains at min_res
    eval_side = next(iter(data.eval_batches("test", 16)))[0].shape[-1]
    batches = bn_reset_batches(data, 16, 3)
    assert len(batches) == 3 and all(x.shape == (16, 3, eval_side, eval_side) for x, _ in batches)
    assert eval_side == 64


def test_bn_reset_runs_with_evaluations_input_conversion():
    """Autocast (bf16 here, on CPU) and channels_last reach the BatchNorm layers during the
    reset, as they do during evaluation; the running mean is the mean of what the first conv
    outputs under that same conversion (an independent forward, by hand)."""
    cfg = DataConfig(name="synthetic", image_size=8, num_classes=4, num_train=64, num_test=32)
    data = open_data(cfg, CPU, {})
    model = build_model("cifar_resnet_20", data.info.input_shape, 4, seed=0)
    model.to(memory_format=torch.channels_last)
    batches = [next(iter(data.eval_batches("train", 16, 16)))]
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    hook = first_conv.register_forward_hook(
        lambda m, inp, out: seen.append((inp[0].is_contiguous(memory_format=torch.channels_last), out.dtype)))
    recompute_bn_stats(model, batches, CPU, "bf16", channels_last=True)
    hook.remove()
    assert seen == [(True, torch.bfloat16)]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats = first_conv(batches[0][0].contiguous(memory_format=torch.channels_last))
    # BatchNorm keeps its statistics in fp32 from the bf16 conv output: equal to the fp32 mean
    # of that same bf16 tensor up to fp32 summation order (64 values per channel: ~1e-6 relative).
    assert torch.allclose(first_bn.running_mean, feats.float().mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_fp64_interpolation_runs_in_float64(pair, tmp_path):
    """precision fp64: the model holds float64 weights like its inputs (it crashed: fp32
    weights, fp64 inputs; issue 21, item 14). The midpoint's error equals a float64 forward
    of the averaged weights, computed here by hand."""
    root, a, b = pair
    cfg64 = dataclasses.replace(CFG, precision="fp64")
    res = run_interpolate_job(InterpolateJob(train=cfg64, num_alphas=3, splits=("test",)),
                              InterpolatePaths(a.weights_path, b.weights_path), RT)
    wa, wb = checkpoint.load_weights(a.weights_path), checkpoint.load_weights(b.weights_path)
    data = open_data(CFG.data, CPU, RT.data_cache)
    model = build_model(CFG.model, data.info.input_shape, data.info.num_classes, seed=0).double()
    model.load_state_dict({k: (wa[k].double() + wb[k].double()) / 2 for k in wa})
    x = torch.cat([x for x, _ in data.eval_batches("test", 512)]).double()
    y = torch.cat([y for _, y in data.eval_batches("test", 512)])
    with torch.no_grad():
        err_mid = (model(x).argmax(1) != y).double().mean().item()
    mid = next(r for r in res.rows if r.alpha == 0.5)
    assert mid.error == pytest.approx(err_mid, abs=1e-12)
