"""Jobs on N ranks, the rank side (trainers/distributed.py, trainers/train.py) on CPU with gloo:
each check against an independent single-process computation."""
from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from trainers import checkpoint, distributed
from trainers.data import order
from trainers.data.bundle import Shard
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


def _result(out_dir) -> dict:  # noqa: ANN001
    import json

    with open(os.path.join(out_dir, "result.json")) as f:
        return json.load(f)


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
    # the evaluation at iteration 0 (equal weights), sharded over the 2 ranks: accuracy exact,
    # loss to the float64 bound derived in test_two_rank_sharded_evaluation_equals_one_rank
    rows = [[m for m in _result(d)["metrics"] if m["iteration"] == 0] for d in (tmp_path / "n1", tmp_path / "n2")]
    assert [m["split"] for m in rows[0]] == [m["split"] for m in rows[1]] == ["test", "train"]
    for a, b in zip(*rows):
        assert a["accuracy"] == b["accuracy"] and abs(a["loss"] - b["loss"]) <= 1e-12 * a["loss"], (a, b)


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
    # per_replica: each rank's last forward left its own running statistics; the sharded final
    # evaluation must be that of the one network rank 0 saves (its buffers broadcast first):
    # weights.pt evaluated in this process, to the float64 bound of the sharded-evaluation test
    from trainers.evaluate import evaluate
    from trainers.models import build_model

    data = open_data(per.train.data, torch.device("cpu"))
    model = build_model(per.train.model, data.info.input_shape, data.info.num_classes, seed=1).double()
    model.load_state_dict(replica)
    final = {m["split"]: m for m in _result(tmp_path / "per")["metrics"] if m["iteration"] == 2}
    for split, limit in (("test", None), ("train", per.train.eval_train_examples)):
        loss, acc = evaluate(model, data.eval_batches(split, 256, limit), torch.device("cpu"), "fp64")
        assert acc == final[split]["accuracy"] and abs(loss - final[split]["loss"]) <= 1e-12 * loss, (split, final)


def test_per_replica_needs_the_per_rank_batch():
    with pytest.raises(ValueError, match="train.bn_batch"):
        distributed.check(30, "per_replica", None, 2, torch.device("cpu"))
    with pytest.raises(ValueError, match="train.bn_batch"):
        distributed.check(30, "per_replica", 15, 3, torch.device("cpu"))
    distributed.check(30, "per_replica", 15, 2, torch.device("cpu"))


# ---- evaluation, replays, masks and failures on a gang (issue 26) -----------------------------


def _spawn(fn, world_size: int, *args) -> None:  # noqa: ANN001
    mp.spawn(fn, args=(world_size, distributed.free_port(), *args), nprocs=world_size, join=True)


def _eval_rank_main(rank: int, world_size: int, port: int, out_dir: str, jpegs: str) -> None:
    torch.set_num_threads(1)
    member = distributed.GangMember(rank=rank, world_size=world_size, address="127.0.0.1", port=port, timeout_seconds=60)
    distributed.join(member, torch.device("cpu"))
    try:
        out = {**_sharded_eval(rank, world_size), "jpeg": _jpeg_eval(jpegs, rank, world_size)}
        torch.save(out, os.path.join(out_dir, f"eval_{rank}.pt"))
    finally:
        distributed.leave()


def _sharded_eval(rank: int, world_size: int) -> dict:
    """The test split and a 100-example train subset in batches of 61 (uneven over 2 ranks, and
    360 = 5 x 61 + 55: an uneven last batch), float64 MLP; also counts the rows this rank's
    forward saw."""
    from trainers.evaluate import evaluate
    from trainers.models import build_model

    data = open_data(DataConfig(name="digits"), torch.device("cpu"))
    model = build_model("mlp_300_100", data.info.input_shape, data.info.num_classes, seed=3).double()
    seen = []
    model.register_forward_hook(lambda m, inp, out: seen.append(len(inp[0])))
    out = {}
    for split, limit in (("test", None), ("train", 100)):
        seen.clear()
        batches = data.eval_batches(split, 61, limit, Shard(rank, world_size))
        out[split] = evaluate(model, batches, torch.device("cpu"), "fp64", False, world_size)
        out[split + "_seen"] = sum(seen)
    return out


JPEG_EVAL = (("test", 3, None), ("train", 3, 11))  # 4 = 3 + 1 and 11 = 3 + 3 + 3 + 2: short last batches


def _jpeg_eval(root: str, rank: int, world_size: int) -> dict:
    """A float64 MLP evaluated on a JPEG folder's splits in batches of 3, this rank's shard
    read by the loader itself; with the number of images this rank decoded."""
    from trainers.evaluate import evaluate
    from trainers.models import build_model

    data = open_data(DataConfig(name="imagenet", root=root, image_size=16), torch.device("cpu"), num_workers=1)
    decoded = {"test": 0, "train": 0}
    for split, transform in (("test", data.test), ("train", data.train)):
        def decode(plan, contents, real=transform.decode, split=split):
            decoded[split] += len(contents)
            return real(plan, contents)

        transform.decode = decode
    model = build_model("mlp_300_100", data.info.input_shape, data.info.num_classes, seed=4).double()
    out = {}
    for split, bs, limit in JPEG_EVAL:
        batches = data.eval_batches(split, bs, limit, Shard(rank, world_size))
        out[split] = evaluate(model, batches, torch.device("cpu"), "fp64", False, world_size)
    return {**out, "decoded": decoded}


def test_two_rank_sharded_evaluation_equals_one_rank(tmp_path):
    """Each of 2 gloo ranks evaluates only its slice (the rows its forward saw add up to the
    split, and neither saw it all); accuracy (all-reduced integer counts) is exactly the 1-rank
    one. The mean loss: each example's float64 loss is the same function of its logits on both
    sides, which can differ only by the matmuls' reassociation (dot products of 64, 300 and 100
    terms in the 3 layers: <= (64 + 300 + 100) * 2^-53 relative), and the sum over n <= 360
    examples is reassociated (<= 360 * 2^-53 relative, the losses being positive): together
    about 1e-13, so 1e-12 leaves room for the cross-entropy's own log-sum-exp."""
    from trainers.data.export import write_image_folder

    jpegs = str(write_image_folder(tmp_path / "jpegs", num_classes=2, per_class_train=8, per_class_val=2,
                                   image_size=36, image_format="jpeg"))
    one = _sharded_eval(0, 1)
    _spawn(_eval_rank_main, 2, str(tmp_path), jpegs)
    ranks = [torch.load(os.path.join(tmp_path, f"eval_{r}.pt")) for r in range(2)]
    for split, total in (("test", 360), ("train", 100)):
        assert one[split + "_seen"] == total
        assert sum(r[split + "_seen"] for r in ranks) == total and all(r[split + "_seen"] < total for r in ranks)
        for r in ranks:
            assert r[split][1] == one[split][1], split  # accuracy: exact counts
            assert abs(r[split][0] - one[split][0]) <= 1e-12 * one[split][0], split
        assert ranks[0][split] == ranks[1][split]  # every rank returns the same all-reduced numbers
    # The same on JPEGs, where each rank's loader decodes its share of every batch only
    # (together each image once; 2 + 1 and 1 + 0 of the test batches, 2 + 1 x 3 and 1 + 1 of
    # the train subset's). The loss bound as above with the 768-term first layer of 16 x 16 x 3
    # inputs and <= 11 examples: (768 + 300 + 100 + 11) x 2^-53, about 1.3e-13.
    one = _jpeg_eval(jpegs, 0, 1)
    assert one["decoded"] == {"test": 4, "train": 11}
    assert [r["jpeg"]["decoded"] for r in ranks] == [{"test": 3, "train": 7}, {"test": 1, "train": 4}]
    for split in ("test", "train"):
        for r in ranks:
            assert r["jpeg"][split][1] == one[split][1], split
            assert abs(r["jpeg"][split][0] - one[split][0]) <= 1e-12 * one[split][0], split
        assert ranks[0]["jpeg"][split] == ranks[1]["jpeg"][split]


def test_a_two_rank_job_given_a_new_rewinding_point_replays_it_as_the_gang(tmp_path):
    """A finished 2-rank run (3 steps, no rewinding point) asked again with save_iters (2,): the
    two ranks replay together (no hang: the process group's timeout is 60 s), W_2 appears, is
    bitwise the W_2 of a 2-rank run that saved it in the first place (so it was replayed at
    the gang's own per-rank slices: one rank at the whole batch sums in another order) and
    equals a 1-rank run's W_2 to float64 rounding (the bound of the test above); weights.pt is
    untouched and no .replay/ is left."""
    import dataclasses

    job = _mlp_job(iterations=3)
    wanted = dataclasses.replace(job, save_iters=(2,))
    grown, direct = str(tmp_path / "grown"), str(tmp_path / "direct")
    _spawn(_rank_main, 2, [(job, grown)])
    before = checkpoint.load_weights(os.path.join(grown, "weights.pt"))
    assert not os.path.exists(os.path.join(grown, "w_2.pt"))
    _spawn(_rank_main, 2, [(wanted, grown), (wanted, direct)])
    assert not os.path.exists(os.path.join(grown, ".replay"))
    after = checkpoint.load_weights(os.path.join(grown, "weights.pt"))
    assert all(torch.equal(before[n], after[n]) for n in before)
    replayed = checkpoint.load_weights(os.path.join(grown, "w_2.pt"))
    saved = checkpoint.load_weights(os.path.join(direct, "w_2.pt"))
    assert all(torch.equal(replayed[n], saved[n]) for n in saved)
    train(wanted, TrainPaths(out_dir=str(tmp_path / "one")), Runtime(device=torch.device("cpu")))
    alone = checkpoint.load_weights(str(tmp_path / "one" / "w_2.pt"))
    for n in alone:
        assert (alone[n] - replayed[n]).abs().max().item() <= 1e-12 * max(alone[n].abs().max().item(), 1.0), n
    import json

    with open(os.path.join(grown, "result.json")) as f:
        assert json.load(f)["saved_weights"] == {"2": os.path.join(grown, "w_2.pt")}


def _mask_rank_main(rank: int, world_size: int, port: int, job: TrainJob, masks: list, out_dir: str) -> None:
    torch.set_num_threads(1)
    member = distributed.GangMember(rank=rank, world_size=world_size, address="127.0.0.1", port=port, timeout_seconds=60)
    rt = Runtime(device=torch.device("cpu"), rank=rank, world_size=world_size)
    distributed.join(member, rt.device)
    try:
        train(job, TrainPaths(out_dir=os.path.join(out_dir, f"run_{rank}"), parent_mask=masks[rank]), rt)
        message = "trained"
    except distributed.RankMismatch as exc:
        message = str(exc)
    finally:
        distributed.leave()
    with open(os.path.join(out_dir, f"message_{rank}"), "w") as f:
        f.write(message)


def test_ranks_given_different_masks_are_refused_naming_the_mask(tmp_path):
    """Two ranks whose masks differ in one entry: both refuse before the first step, naming the
    mask and the rank that differs; given one mask, the same gang trains."""
    from trainers.models import build_model
    from trainers.pruning import full_mask

    job = _mlp_job(iterations=1)
    mask = full_mask(build_model("mlp_300_100", (64,), 10, seed=3))
    other = {n: m.clone() for n, m in mask.items()}
    other[next(iter(other))].view(-1)[0] = False
    paths = [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]
    checkpoint.save(mask, paths[0])
    checkpoint.save(other, paths[1])
    _spawn(_mask_rank_main, 2, job, paths, str(tmp_path))
    for r in range(2):
        text = (tmp_path / f"message_{r}").read_text()
        assert "the mask differs between the ranks" in text and "rank 1 computed another one" in text, text
    assert not (tmp_path / "run_0" / "weights.pt").exists()
    _spawn(_mask_rank_main, 2, job, [paths[0], paths[0]], str(tmp_path))
    assert [(tmp_path / f"message_{r}").read_text() for r in range(2)] == ["trained", "trained"]


def _failing_rank_main(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import time

    torch.set_num_threads(1)
    member = distributed.GangMember(rank=rank, world_size=world_size, address="127.0.0.1", port=port)  # default timeout

    def on_step(it: int) -> None:
        if rank == 1 and it == 2:
            with open(os.path.join(out_dir, "raised_at"), "w") as f:
                f.write(repr(time.time()))
            raise RuntimeError("rank 1 fails")

    rt = Runtime(device=torch.device("cpu"), rank=rank, world_size=world_size, on_step=on_step)
    distributed.join(member, rt.device)
    failed = True
    try:
        train(_mlp_job(iterations=50), TrainPaths(out_dir=os.path.join(out_dir, "run")), rt)
        failed = False
    except Exception:  # noqa: BLE001 - the test reads the times, not the error
        pass
    finally:
        distributed.leave(failed=failed)
        with open(os.path.join(out_dir, f"left_{rank}"), "w") as f:
            f.write(repr((time.time(), failed)))


def test_a_failing_rank_and_its_peer_leave_in_bounded_time_with_the_default_timeout(tmp_path):
    """Rank 1 raises after step 2 while rank 0 waits in the next all-reduce, with the default
    collective timeout (1800 s): rank 1 aborts its group instead of destroying it, rank 0's
    collective fails on the closed connection, and both have left within 60 s of the raise
    (the bound the README states for the driver, which records a gang's failure as soon as one
    rank's call fails)."""
    _spawn(_failing_rank_main, 2, str(tmp_path))
    raised = float((tmp_path / "raised_at").read_text())
    for r in range(2):
        when, failed = eval((tmp_path / f"left_{r}").read_text())  # noqa: S307 - our own repr
        assert failed
        assert when - raised < 60, (r, when - raised)
        print(f"rank {r} left {when - raised:.2f} s after rank 1 raised")


def test_a_process_group_takes_the_longest_gang_timeout_a_config_may_give():
    """scheduler.gang_timeout_seconds is bounded by limits.MAX_SECONDS (1e300 overflowed torch's
    timedelta on every attempt): a group joined with the bound itself works."""
    from orchestrator import limits

    member = distributed.GangMember(rank=0, world_size=1, address="127.0.0.1", port=0,
                                    timeout_seconds=limits.MAX_SECONDS)
    distributed.join(member, torch.device("cpu"))
    try:
        t = torch.ones(3)
        torch.distributed.all_reduce(t)
        assert torch.equal(t, torch.ones(3))
    finally:
        distributed.leave()


def test_a_two_rank_early_bird_search_stops_where_one_rank_does(tmp_path):
    """An early-bird search on 2 ranks: the ranks compare their scores' digest at every epoch
    start (its detectors decide when the job stops, so a rank that stopped alone would leave
    the other in a collective): with equal scores the check passes, and the search detects at
    the epoch one rank does (queue 2, threshold 0.5: the first comparison, far from the
    threshold) and stops there on both ranks. (A refused mismatch: the masks test above.)"""
    import dataclasses

    from trainers.jobs import EarlyBirdConfig

    base = _mlp_job(iterations=24 * 3)  # digits: the search counts ceil(1437 / 61) = 24 iterations an epoch
    job = dataclasses.replace(base, early_bird=EarlyBirdConfig(kind="unstructured", fractions=(0.5,), queue=2,
                                                               threshold=0.5))
    one = train(job, TrainPaths(out_dir=str(tmp_path / "one")), Runtime(device=torch.device("cpu")))
    _spawn(_rank_main, 2, [(job, str(tmp_path / "two"))])
    two = _result(tmp_path / "two")
    assert one.end_iter == two["end_iter"] == 24
    assert [r["detect_iter"] for r in two["early_bird"]] == [r["detect_iter"] for r in one.early_bird] == [24]
