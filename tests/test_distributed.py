"""Jobs on N ranks, the rank side (trainers/distributed.py, trainers/train.py) on CPU with gloo:
each check against an independent single-process computation."""
from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from trainers import checkpoint, distributed
from trainers.data import order
from trainers.data.sources import open_data
from trainers.jobs import DataConfig, OptimizerConfig, TrainConfig, TrainJob, TrainPaths
from trainers.runtime import Runtime
from trainers.train import train


def _mlp_job(iterations: int = 1, batch_size: int = 61) -> TrainJob:
    # batch 61: odd, so 2 ranks take 31 + 30 and 4 ranks 16 + 15 + 15 + 15 (the uneven split)
    cfg = TrainConfig(
        model="mlp_300_100", data=DataConfig(name="digits"), iterations=iterations, batch_size=batch_size,
        optimizer=OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4),
        precision="fp64", eval_train_examples=64, channels_last=False,
    )
    return TrainJob(train=cfg, init_seed=3, data_seed=5)


def _bn_job(iterations: int = 2) -> TrainJob:
    data = DataConfig(name="synthetic", image_size=8, num_classes=4, num_train=64, num_test=32, augment=False)
    cfg = TrainConfig(
        model="cifar_resnet_20", data=data, iterations=iterations, batch_size=30,
        optimizer=OptimizerConfig(name="sgd", lr=0.1, momentum=0.9), precision="fp64",
        eval_train_examples=32, channels_last=False, bn_sync="global",
    )
    return TrainJob(train=cfg, init_seed=1, data_seed=2)


def _rank_main(rank: int, world_size: int, port: int, runs: list[tuple[TrainJob, str]]) -> None:
    torch.set_num_threads(1)
    member = distributed.GangMember(rank=rank, world_size=world_size, address="127.0.0.1", port=port, timeout_seconds=60)
    rt = Runtime(device=torch.device("cpu"), rank=rank, world_size=world_size)
    distributed.join(member, rt.device)
    try:
        for job, out_dir in runs:
            train(job, TrainPaths(out_dir=out_dir), rt)
    finally:
        distributed.leave()


def _train_on_ranks(job: TrainJob, out_dir: str, world_size: int, also: tuple = ()) -> dict[str, torch.Tensor]:
    """`job`'s weights; `also`: more (job, out_dir) trained after it by the same processes (a
    spawn costs more than a small job)."""
    runs = [(job, out_dir), *also]
    if world_size == 1:
        for j, d in runs:
            train(j, TrainPaths(out_dir=d), Runtime(device=torch.device("cpu")))
    else:
        mp.spawn(_rank_main, args=(world_size, distributed.free_port(), runs), nprocs=world_size, join=True)
    return checkpoint.load_weights(os.path.join(out_dir, "weights.pt"))


def test_rank_slices_partition_the_single_process_batch():
    """For N = 1, 2, 4 the ranks' slices of each global batch, in rank order, are the batch the
    data order draws (epoch permutation, positions [s*B, (s+1)*B)) for one whole epoch and the
    first batch of the next; B = 61 splits unevenly over 2 and 4 ranks."""
    data = open_data(DataConfig(name="digits"), torch.device("cpu"))
    B, seed = 61, 7
    n = data.info.num_train
    ipe = n // B
    stream = data.train_stream(seed, B, 0)
    for it in range(ipe + 1):
        x, y = next(stream)
        epoch, s = divmod(it, ipe)
        idx = order.epoch_permutation(seed, epoch, n)[s * B:(s + 1) * B]
        for world in (1, 2, 4):
            bounds = [distributed.rank_slice(len(y), r, world) for r in range(world)]
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1 and sum(sizes) == B
            xs = torch.cat([x[lo:hi] for lo, hi in bounds])
            ys = torch.cat([y[lo:hi] for lo, hi in bounds])
            assert torch.equal(xs, data.train_x[idx]) and torch.equal(ys, data.train_y[idx])


def test_weighted_loss_is_the_global_mean_for_an_uneven_split():
    """Per-rank sums times N / B, averaged over the ranks as DDP does, are the mean over the
    global batch; averaging the ranks' own means would not be (31 vs 30 examples)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(61, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (61,), generator=g)
    mean = torch.nn.functional.cross_entropy(logits, y)
    parts = [distributed.weighted_cross_entropy(logits[lo:hi], y[lo:hi], 61, 2)
             for lo, hi in (distributed.rank_slice(61, r, 2) for r in range(2))]
    assert torch.allclose(sum(parts) / 2, mean, rtol=1e-14, atol=0)


def test_two_rank_mlp_steps_equal_one_rank(tmp_path):
    """Three SGD steps (momentum, weight decay) of an MLP on 2 gloo ranks vs 1 process, float64,
    batch 61 split 31 + 30. Both compute the same sums in another order: the difference is float64
    rounding of a 61-term gradient sum, ~61 * 2.2e-16 relative to the gradient, so 1e-12 of the
    weights' scale bounds it with room to spare (the weighting itself is checked above).
    The same processes then train a job that diverges (lr 1e4): each rank sees only its slice's
    loss, the ranks agree on the earliest non-finite one, so all stop together (none waits in a
    collective the others left) where one process stops."""
    import dataclasses
    import json

    job = _mlp_job(iterations=3)
    base = _mlp_job(iterations=40)
    diverging = dataclasses.replace(base, train=dataclasses.replace(base.train, optimizer=OptimizerConfig(name="sgd", lr=1e4, momentum=0.9)))
    one = _train_on_ranks(job, str(tmp_path / "n1"), 1, also=[(diverging, str(tmp_path / "d1"))])
    two = _train_on_ranks(job, str(tmp_path / "n2"), 2, also=[(diverging, str(tmp_path / "d2"))])
    stopped = {}
    for n in (1, 2):
        with open(tmp_path / f"d{n}" / "result.json") as f:
            stopped[n] = json.load(f)
    first = stopped[1]["nonfinite_iter"]
    assert first is not None and first < 39
    assert stopped[2]["nonfinite_iter"] == first and stopped[2]["end_iter"] == stopped[1]["end_iter"] == first + 1
    for name in one:
        scale = one[name].abs().max().item()
        assert (one[name] - two[name]).abs().max().item() <= 1e-12 * max(scale, 1.0), name
    assert all(t.dtype == torch.float64 for t in one.values())
    start = checkpoint.state_dict_cpu(__import__("trainers.models", fromlist=["build_model"]).build_model(
        "mlp_300_100", (64,), 10, seed=3))
    assert any((one[n] - start[n].double()).abs().max() > 1e-4 for n in one)  # the steps moved the weights


def test_global_batchnorm_on_two_ranks_equals_one_rank(tmp_path):
    """bn_sync global: a CIFAR ResNet (BatchNorm after every convolution) trained 2 steps on 2
    gloo ranks (batch 30: 15 + 15) equals one process with ordinary BatchNorm, weights and running
    statistics, to float64 rounding (same bound as the MLP); per_replica statistics over 15
    examples give visibly other weights (the check that this test can fail)."""
    job = _bn_job()
    one = _train_on_ranks(job, str(tmp_path / "n1"), 1)
    two = _train_on_ranks(job, str(tmp_path / "n2"), 2)
    for name in one:
        if one[name].is_floating_point():
            scale = one[name].abs().max().item()
            assert (one[name] - two[name]).abs().max().item() <= 1e-12 * max(scale, 1.0), name
    import dataclasses

    per = dataclasses.replace(job, train=dataclasses.replace(job.train, bn_sync="per_replica", bn_batch=15))
    replica = _train_on_ranks(per, str(tmp_path / "per"), 2)
    assert max((one[n] - replica[n]).abs().max().item() for n in one if one[n].is_floating_point()) > 1e-6


def test_per_replica_needs_the_per_rank_batch():
    with pytest.raises(ValueError, match="train.bn_batch"):
        distributed.check(30, "per_replica", None, 2, torch.device("cpu"))
    with pytest.raises(ValueError, match="train.bn_batch"):
        distributed.check(30, "per_replica", 15, 3, torch.device("cpu"))
    distributed.check(30, "per_replica", 15, 2, torch.device("cpu"))

