"""Sharded input: on N ranks each rank reads, decodes and augments only its slice of every global
batch (trainers/data/bundle.py, Shard), and the union of the slices is the 1-rank batch, bit for
bit, for N = 1, 2, 3 (uneven splits included): the JPEG folder loader on generated JPEGs, FFCV
where it is importable, the device-resident sets; then a real gang (gloo) trained on JPEGs."""
from __future__ import annotations

import itertools
import json
import os
import threading

import pytest
import torch
import torch.multiprocessing as mp

import trainers.data.sources as D
from trainers import checkpoint, distributed
from trainers.data import imagenet
from trainers.data.bundle import Shard
from trainers.data.export import write_image_folder
from trainers.jobs import DataConfig, OptimizerConfig, TrainConfig, TrainJob, TrainPaths
from trainers.runtime import Runtime
from trainers.train import train

# numba's dispatchers, built by the FFCV test, are finalised whenever the collector runs (often
# in a later test here) and raise a harmless KeyError inside numba (tests/test_ffcv.py)
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
torch.set_num_threads(1)
CPU = torch.device("cpu")
B = 7  # odd: 2 ranks take 4 + 3, 3 ranks 3 + 2 + 2


def take(stream, k):
    out = list(itertools.islice(stream, k))
    stream.close()
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # 2 x 8 = 16 training JPEGs of varied sizes: 2 iterations per epoch at B = 7 (2 sit out)
    return write_image_folder(tmp_path_factory.mktemp("jpegs"), num_classes=2, per_class_train=8, per_class_val=2,
                              image_size=36, image_format="jpeg")


def _recording(bundle) -> list[tuple[int, ...]]:
    """The example indices of every batch the bundle's training transform decodes, in order."""
    decoded: list[tuple[int, ...]] = []
    real = bundle.train.decode

    def decode(plan, contents):
        decoded.append(plan.indices)
        assert len(contents) == len(plan.indices)  # the files read are the files decoded
        return real(plan, contents)

    bundle.train.decode = decode
    return decoded


def test_jpeg_ranks_decode_their_slice_only_and_the_slices_make_the_batch(folder):
    """For N = 1, 2, 3 and each rank: the i-th batch the rank decodes is the i-th batch it trains
    on, and holds exactly its slice of the global plan (so decoded images per step = B/N, not B);
    the slices in rank order equal the 1-rank batch bitwise: images (augmented: random-resized
    crops, flips, two epochs) and labels."""
    cfg = DataConfig(name="imagenet", root=str(folder), image_size=32)
    steps = 4  # two epochs
    one = D.open_data(cfg, CPU, num_workers=2)
    whole = take(one.train_stream(3, B, 0), steps)
    ipe = one.iterations_per_epoch(B)
    plans = list(itertools.islice(imagenet.train_plans(16, 3, B, 0, ipe, True, cfg), steps))
    for n in (1, 2, 3):
        parts = []
        for r in range(n):
            bundle = D.open_data(cfg, CPU, num_workers=2)
            decoded = _recording(bundle)
            got = take(bundle.train_stream(3, B, 0, Shard(r, n)), steps)
            lo, hi = distributed.rank_slice(B, r, n)
            for t, (x, y) in enumerate(got):
                assert decoded[t] == plans[t].indices[lo:hi]  # read and decoded: this slice only
                assert len(y) == len(x) == len(decoded[t]) == hi - lo
            parts.append(got)
        for t in range(steps):
            assert torch.equal(torch.cat([p[t][0] for p in parts]), whole[t][0]), (n, t)
            assert torch.equal(torch.cat([p[t][1] for p in parts]), whole[t][1]), (n, t)
    # resuming a rank's stream mid-epoch continues the same slices
    resumed = take(D.open_data(cfg, CPU, num_workers=1).train_stream(3, B, 1, Shard(2, 3)), 2)
    for t, (x, y) in enumerate(resumed, start=1):
        assert torch.equal(x, whole[t][0][5:7]) and torch.equal(y, whole[t][1][5:7])


def test_a_gang_larger_than_the_batch_is_refused(folder):
    """At `lth run` (the spec names resources), and by the loader itself."""
    from conftest import DEMO
    from orchestrator.spec import SpecError, load_spec

    with pytest.raises(SpecError, match="3 ranks for a batch of 2 examples") as e:
        load_spec(DEMO, ["train.batch_size=2", "resources.ranks=3", "resources.cpus=3"])
    assert e.value.field == "resources"
    bundle = D.open_data(DataConfig(name="imagenet", root=str(folder), image_size=32), CPU, num_workers=1)
    with pytest.raises(ValueError, match="batch_size 2 is smaller than the 3 ranks"):
        bundle.train_stream(0, 2, 0, Shard(2, 3))
    with pytest.raises(ValueError, match="rank 3 outside a gang of 3"):
        Shard(3, 3)


def test_resident_slices_make_the_batch():
    """Device-resident data (here augmented synthetic images) keeps slicing in memory: the same
    union rule."""
    bundle = D.open_data(DataConfig(name="synthetic", image_size=16, num_classes=3, num_train=40, num_test=8), CPU)
    whole = take(bundle.train_stream(1, B, 4), 3)
    for n in (2, 3):
        parts = [take(bundle.train_stream(1, B, 4, Shard(r, n)), 3) for r in range(n)]
        for t in range(3):
            assert torch.equal(torch.cat([p[t][0] for p in parts]), whole[t][0])
            assert torch.equal(torch.cat([p[t][1] for p in parts]), whole[t][1])


try:
    import ffcv  # noqa: F401

    FFCV_ERROR = None
except Exception as e:  # an optional extra
    FFCV_ERROR = repr(e)


@pytest.mark.skipif(FFCV_ERROR is not None, reason=f"ffcv is not importable: {FFCV_ERROR}")
def test_ffcv_ranks_load_their_slice_only_and_the_slices_make_the_batch(folder, tmp_path, monkeypatch):
    """FFCV: each rank's Loader is built for its slice (batch size B/N over the slice's examples,
    so it decodes those only); the slices in rank order equal the 1-rank batch bitwise. Without
    augmentation: ffcv's random crops are not seeded per position (ffcv_io.py), its centre crops
    are a function of the image alone."""
    from trainers.data.beton_writer import write_beton
    from trainers.data.ffcv_io import FfcvLoaderBundle

    write_beton(DataConfig(name="imagenet", root=str(folder), image_size=32), tmp_path / "beton", max_resolution=48)
    cfg = DataConfig(name="ffcv_imagenet", root=str(tmp_path / "beton"), image_size=32, augment=False)
    loaders = []
    real = FfcvLoaderBundle._make_loader

    def spy(self, *args, **kw):
        made = real(self, *args, **kw)
        loaders.append(made[0])
        return made

    monkeypatch.setattr(FfcvLoaderBundle, "_make_loader", spy)
    bundle = D.open_data(cfg, CPU, num_workers=1)
    steps = 3  # into the second epoch (ipe = 2)
    whole = take(bundle.train_stream(5, B, 0), steps)
    for n in (2, 3):
        parts = []
        for r in range(n):
            got = take(bundle.train_stream(5, B, 0, Shard(r, n)), steps)
            lo, hi = distributed.rank_slice(B, r, n)
            assert loaders[-1].batch_size == hi - lo  # what the rank's loader reads and decodes per step
            assert [len(y) for _, y in got] == [hi - lo] * steps
            parts.append(got)
        for t in range(steps):
            assert torch.equal(torch.cat([p[t][0] for p in parts]), whole[t][0]), (n, t)
            assert torch.equal(torch.cat([p[t][1] for p in parts]), whole[t][1]), (n, t)
    # evaluation: each rank's loader holds its slices of the batches (16 train images in batches
    # of 7: 7 + 7 + 2) and decodes those; in rank order they are the 1-rank batches bitwise
    evals = list(bundle.eval_batches("train", B))
    assert [len(y) for _, y in evals] == [7, 7, 2]
    for n in (2, 3):
        parts = []
        for r in range(n):
            got = list(bundle.eval_batches("train", B, None, Shard(r, n)))
            slices = [hi - lo for lo, hi in (distributed.rank_slice(len(y), r, n) for _, y in evals)]
            assert loaders[-1].batch_size == slices[0] and [len(y) for _, y in got] == [k for k in slices if k]
            parts.append(iter(got))
        for t, (x, y) in enumerate(evals):
            pieces = [next(parts[r]) for r in range(n) if distributed.rank_slice(len(y), r, n)[1] > distributed.rank_slice(len(y), r, n)[0]]
            assert torch.equal(torch.cat([px for px, _ in pieces]), x), (n, t)
            assert torch.equal(torch.cat([py for _, py in pieces]), y), (n, t)


# ---- a gang trained on JPEGs ----------------------------------------------------------------


def _job(root: str) -> TrainJob:
    cfg = TrainConfig(
        model="mlp_300_100", data=DataConfig(name="imagenet", root=root, image_size=16), iterations=3,
        batch_size=B, optimizer=OptimizerConfig(name="sgd", lr=0.05, momentum=0.9), precision="fp64",
        eval_train_examples=4, channels_last=False,
    )
    return TrainJob(train=cfg, init_seed=2, data_seed=9)


def _rank_main(rank: int, world_size: int, port: int, job: TrainJob, out_dir: str) -> None:
    """One rank: trains, and writes which examples its loader decoded and which it trained on."""
    torch.set_num_threads(1)
    decoded, trained = [], []
    real_decode, real_stream = imagenet.FolderTransform.decode, imagenet.FolderBundle.train_stream

    def decode(self, plan, contents):
        if plan.seeds and plan.seeds[0] is not None:  # training plans (evaluation's have no crop seeds)
            decoded.append(list(plan.indices))
        return real_decode(self, plan, contents)

    def stream(self, *args, **kw):
        for x, y in real_stream(self, *args, **kw):
            trained.append(y.tolist())
            yield x, y

    imagenet.FolderTransform.decode, imagenet.FolderBundle.train_stream = decode, stream
    rt = Runtime(device=CPU, rank=rank, world_size=world_size)
    if world_size > 1:
        distributed.join(distributed.GangMember(rank, world_size, "127.0.0.1", port, timeout_seconds=60), CPU)
    try:
        train(job, TrainPaths(out_dir=out_dir), rt)
    finally:
        distributed.leave()
        imagenet.FolderTransform.decode, imagenet.FolderBundle.train_stream = real_decode, real_stream  # rank 0 of 1 runs in pytest's process
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"decoded": decoded, "trained": trained}, f)
    # The stream was closed when train() returned, but its threads may still be inside a decode:
    # a process that exits under a thread running torch's C++ code can abort ("terminate called
    # without an active exception"), so a spawned rank waits for them.
    for t in threading.enumerate():
        if t.name.startswith(("lth-prefetch", "lth-read")):
            t.join(timeout=60)


def test_a_gang_fed_by_jpegs_decodes_its_slices_and_trains_as_one_rank(folder, tmp_path):
    """3 SGD steps of an MLP on JPEG crops (float64) on 1 and 3 gloo ranks (3 + 2 + 2: N = 2 is
    the data test's above; a gang's processes cost seconds each on CI): every rank decoded,
    step by step, exactly the examples it trained on (its slice: B/N per step); the trained
    slices in rank order are the 1-rank batches; the weights agree to float64 rounding (the bound
    of tests/test_distributed.py: N ranks sum the same 7-term gradient in another order)."""
    job = _job(str(folder))
    runs = {}
    for n in (1, 3):
        out = str(tmp_path / f"n{n}")
        if n == 1:
            _rank_main(0, 1, 0, job, out)
        else:
            os.makedirs(out)
            mp.spawn(_rank_main, args=(n, distributed.free_port(), job, out), nprocs=n, join=True)
        ranks = []
        for r in range(n):
            with open(os.path.join(out, f"rank{r}.json")) as f:
                ranks.append(json.load(f))
        runs[n] = (ranks, checkpoint.load_weights(os.path.join(out, "weights.pt")))
    one_ranks, one_weights = runs[1]
    steps = len(one_ranks[0]["trained"])
    assert steps == job.train.iterations
    for n in (3,):
        ranks, weights = runs[n]
        for r, got in enumerate(ranks):
            lo, hi = distributed.rank_slice(B, r, n)
            assert len(got["trained"]) == steps
            for t in range(steps):
                assert len(got["decoded"][t]) == len(got["trained"][t]) == hi - lo
                assert got["decoded"][t] == one_ranks[0]["decoded"][t][lo:hi]
        for t in range(steps):
            assert sum((got["trained"][t] for got in ranks), []) == one_ranks[0]["trained"][t]
        for name, w in one_weights.items():
            assert (w - weights[name]).abs().max().item() <= 1e-12 * max(w.abs().max().item(), 1.0), (n, name)


# ---- sharded evaluation input ----------------------------------------------------------------


def _eval_recording(bundle) -> dict[str, list[tuple[int, ...]]]:
    """The example indices of every evaluation batch the bundle decodes, per split."""
    decoded: dict[str, list[tuple[int, ...]]] = {"test": [], "train": []}
    for split, transform in (("test", bundle.test), ("train", bundle.train)):
        real = transform.decode

        def decode(plan, contents, real=real, split=split):
            decoded[split].append(plan.indices)
            assert len(contents) == len(plan.indices)  # the files read are the files decoded
            return real(plan, contents)

        transform.decode = decode
    return decoded


EVAL_CASES = (("test", 3, None), ("train", 3, 11))  # 4 = 3 + 1 and 11 = 3 + 3 + 3 + 2: short last batches


def test_jpeg_ranks_decode_their_slice_of_each_evaluation_batch(folder):
    """For N = 1, 2, 3: each rank's i-th evaluation batch is its rank_slice of the 1-rank i-th
    batch and is all that it read and decoded; a rank whose slice of a short last batch is empty
    (1 image over 2 or 3 ranks) decodes nothing for it; the slices in rank order are the 1-rank
    evaluation batches bitwise (images and labels)."""
    cfg = DataConfig(name="imagenet", root=str(folder), image_size=32)
    one = D.open_data(cfg, CPU, num_workers=2)
    whole = {split: list(one.eval_batches(split, bs, limit)) for split, bs, limit in EVAL_CASES}
    plans = {}
    for split, bs, limit in EVAL_CASES:
        bundle = D.open_data(cfg, CPU, num_workers=1)
        rec = _eval_recording(bundle)
        list(bundle.eval_batches(split, bs, limit))
        plans[split] = rec[split]
    assert [len(p) for p in plans["test"]] == [3, 1] and [len(p) for p in plans["train"]] == [3, 3, 3, 2]
    for n in (1, 2, 3):
        for split, bs, limit in EVAL_CASES:
            got = []
            for r in range(n):
                bundle = D.open_data(cfg, CPU, num_workers=2)
                decoded = _eval_recording(bundle)
                batches = list(bundle.eval_batches(split, bs, limit, Shard(r, n)))
                slices = [plan[slice(*distributed.rank_slice(len(plan), r, n))] for plan in plans[split]]
                assert decoded[split] == [s for s in slices if s], (n, r, split)  # its slices only, empty ones skipped
                assert [len(y) for _, y in batches] == [len(s) for s in slices if s]
                got.append(iter(batches))
            for t, (x, y) in enumerate(whole[split]):
                pieces = [next(got[r]) for r in range(n) if distributed.rank_slice(len(y), r, n)[1] > distributed.rank_slice(len(y), r, n)[0]]
                assert torch.equal(torch.cat([px for px, _ in pieces]), x), (n, split, t)
                assert torch.equal(torch.cat([py for _, py in pieces]), y), (n, split, t)
            assert all(next(g, None) is None for g in got)
