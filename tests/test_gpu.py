"""The GPU suite (`make gpu-test`, marker `gpu`): what only a CUDA device can show. Skipped
without one; the CPU suite checks the same code paths in fp32/float64 on CPU.

- packed (stacked) training equals one-by-one training, in bf16 and fp32;
- deterministic kernels give bitwise equal repeated jobs and a bitwise resume;
- pruned weights stay exactly zero with the fused optimizers, eager and with CUDA graphs;
- the CUDA-graph step equals the eager step within float32 rounding of the learning rate;
- the compile path runs.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import masked_snapshots
from trainers import checkpoint
from trainers.jobs import DataConfig, OptimizerConfig, PruneConfig, TrainConfig, TrainJob, TrainPaths
from trainers.models import build_model
from trainers.packed import train_packed
from trainers.runtime import Runtime
from trainers.train import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CONV = TrainConfig(
    model="cifar_resnet_20",
    data=DataConfig(name="synthetic", image_size=16, num_classes=4, num_train=512, num_test=128, augment=True),
    iterations=24, batch_size=32, eval_every=8, eval_train_examples=128,
    optimizer=OptimizerConfig(lr=0.05, momentum=0.9, weight_decay=5e-4),
)


def rt() -> Runtime:
    return Runtime(device=torch.device("cuda"))


def weights(result) -> dict[str, torch.Tensor]:
    return checkpoint.load_weights(result.weights_path)


def bitwise(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def pruned_children(tmp_path, cfg: TrainConfig, k: int = 3, tag: str = ""):
    """A dense run, then k children of level 1 (same pruned start, other data orders)."""
    dense = train(TrainJob(train=cfg, init_seed=0, data_seed=0, save_iters=(4,)), TrainPaths(out_dir=str(tmp_path / f"d{tag}")), rt())
    jobs = [TrainJob(train=cfg, init_seed=0, data_seed=1 + i, start_iter=4, save_iters=(12,), prune=PruneConfig(fraction=0.6))
            for i in range(k)]

    def paths(name: str, i: int) -> TrainPaths:
        return TrainPaths(out_dir=str(tmp_path / f"{name}{tag}{i}"), parent_weights=dense.weights_path,
                          parent_mask=dense.mask_path, rewind_weights=dense.saved_weights[4])

    return jobs, paths


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_packed_equals_one_by_one(tmp_path, precision):
    """Grouped and separate convolutions sum in another order, so many steps cannot be compared
    bit for bit; what must hold: it packed (no fallback), the start is exact (the same weights
    through the same evaluation), masks are exact, pruned weights are zero, and each packed member
    is nearer its own one-by-one run than its sibling (another data order) is."""
    cfg = dataclasses.replace(CONV, precision=precision)
    jobs, paths = pruned_children(tmp_path, cfg)
    packed = train_packed(jobs, [paths("p", i) for i in range(3)], rt(), strategy="stacked")
    single = [train(j, paths("s", i), rt()) for i, j in enumerate(jobs)]
    assert {r.strategy for r in packed} == {"stacked"}
    for p, s in zip(packed, single):
        assert (p.metrics[0].loss, p.metrics[0].accuracy) == (s.metrics[0].loss, s.metrics[0].accuracy)
        mask = checkpoint.load_mask(p.mask_path)
        assert bitwise(mask, checkpoint.load_mask(s.mask_path))
        for name, m in mask.items():
            assert torch.count_nonzero(weights(p)[name][~m]) == 0
    w = [weights(r)["blocks.0.conv1.weight"] for r in packed + single]
    for k in range(3):
        own = (w[k] - w[3 + k]).norm()
        assert all(own < (w[k] - w[3 + other]).norm() for other in range(3) if other != k)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_deterministic_jobs_repeat_and_resume_bitwise(tmp_path, precision):
    cfg = dataclasses.replace(CONV, precision=precision, deterministic=True)
    job = TrainJob(train=cfg, init_seed=0, data_seed=3)
    a = train(job, TrainPaths(out_dir=str(tmp_path / "a")), rt())
    b = train(job, TrainPaths(out_dir=str(tmp_path / "b")), rt())
    assert a.deterministic is True and bitwise(weights(a), weights(b))

    class Interrupt(Exception):
        pass

    def crash(row):
        if row.iteration == 16:
            raise Interrupt

    resumable = TrainPaths(out_dir=str(tmp_path / "c"), checkpoint_every_iters=10)
    with pytest.raises(Interrupt):
        train(job, resumable, dataclasses.replace(rt(), on_metric=crash))
    c = train(job, resumable, rt())
    assert c.resumed_from == 10 and bitwise(weights(a), weights(c))


@pytest.mark.parametrize("cuda_graphs", [False, True])
@pytest.mark.parametrize("opt", [OptimizerConfig(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
                                 OptimizerConfig(name="adam", lr=1e-2, weight_decay=1e-3)])
def test_pruned_weights_stay_exactly_zero_with_fused_optimizers(tmp_path, opt, cuda_graphs):
    cfg = dataclasses.replace(CONV, optimizer=opt, cuda_graphs=cuda_graphs)
    jobs, paths = pruned_children(tmp_path, cfg, k=2)
    runs = [train(jobs[0], paths("s", 0), rt()), *train_packed(jobs, [paths("p", i) for i in range(2)], rt(), strategy="stacked")]
    for path, w, mask in masked_snapshots(runs, 12):
        for name, m in mask.items():
            assert torch.count_nonzero(w[name][~m]) == 0, (path, name)


@pytest.mark.parametrize("packed", [False, True])
def test_cuda_graph_step_equals_the_eager_step(tmp_path, packed):
    """One step, fp32, deterministic kernels. The graph replays the eager step's kernels; the one
    difference is the learning rate, a float32 device tensor instead of a Python double: the
    update lr * d may differ by 2**-24 of itself, and the new weight by one rounding (2**-24 of
    |w|, twice for safety). The first step is also the one after the capture's warm-up, so any
    warm-up not undone would show here as a difference of a whole update."""
    cfg = dataclasses.replace(CONV, precision="fp32", iterations=1, eval_every=0)
    jobs = [TrainJob(train=cfg, init_seed=s, data_seed=s) for s in range(2 if packed else 1)]

    def run(graphs: bool, tag: str):
        c = dataclasses.replace(cfg, cuda_graphs=graphs)
        js = [dataclasses.replace(j, train=c) for j in jobs]
        ps = [TrainPaths(out_dir=str(tmp_path / f"{tag}{i}")) for i in range(len(js))]
        return train_packed(js, ps, rt(), strategy="stacked") if packed else [train(js[0], ps[0], rt())]

    eager, graphed = run(False, "e"), run(True, "g")
    start = checkpoint.state_dict_cpu(build_model(cfg.model, (3, 16, 16), 4, seed=0))
    e, g = weights(eager[0]), weights(graphed[0])
    for name, w0 in start.items():
        if not w0.is_floating_point():
            continue
        tol = 2.0**-24 * (e[name] - w0).abs().max().item() + 2 * 2.0**-24 * e[name].abs().max().item()
        assert (e[name] - g[name]).abs().max().item() <= tol, name


def test_compile_path_runs(tmp_path):
    cfg = dataclasses.replace(CONV, compile=True, iterations=8, eval_every=4)
    single = train(TrainJob(train=cfg, init_seed=0, data_seed=0), TrainPaths(out_dir=str(tmp_path / "s")), rt())
    packed = train_packed([TrainJob(train=cfg, init_seed=s, data_seed=s) for s in range(2)],
                          [TrainPaths(out_dir=str(tmp_path / f"p{s}")) for s in range(2)], rt(), strategy="stacked")
    for r in (single, *packed):
        assert all(torch.isfinite(t).all() for t in weights(r).values() if t.is_floating_point())
        assert r.test_loss == r.test_loss  # not NaN
