"""The JPEG folder loader: crops as a pure function of (seed, epoch, position, image size) whatever
the decode device or the number of reader threads, resume, counts and labels, the files nvJPEG
cannot take (CMYK, greyscale, PNG named .JPEG, truncated, corrupt, unreadable) handled and named,
the prefetch thread's shutdown, and worker counts from the job's CPUs."""
from __future__ import annotations

import io
import itertools
import os
import threading

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import trainers.data.sources as D
from trainers.data import imagenet, order
from trainers.data.export import write_image_folder
from trainers.data.jpeg import DecodeStats, decode_batch, jpeg_components
from trainers.data.prefetch import Prefetcher
from trainers.data.resident import ResizedCropFlip
from trainers.data.workers import available_cpus, loader_workers
from trainers.jobs import DataConfig
from trainers.runtime import Runtime

torch.set_num_threads(1)
CPU = torch.device("cpu")
MEAN = torch.tensor(imagenet.MEAN).view(1, 3, 1, 1) * 255
STD = torch.tensor(imagenet.STD).view(1, 3, 1, 1) * 255


def take(stream, k):
    out = list(itertools.islice(stream, k))
    stream.close()
    return out


def folder_cfg(root, **kw) -> DataConfig:
    return DataConfig(name="imagenet", root=str(root), image_size=32, **kw)


def encode(arr: np.ndarray, mode: str = "RGB", fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo(h: int = 45, w: int = 52, seed: int = 0) -> np.ndarray:
    # Smooth enough that JPEG keeps it recognisable, varied enough that crops differ.
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 255 / (h + w)], -1)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


# ---- crops: one function of (seed, image size), whatever decodes ---------------------------


def test_batched_crop_boxes_equal_the_per_image_draws():
    """crop_params takes a batch of images of different sizes at once; each box must equal the
    one ResizedCropFlip.draw gives that image alone (torchvision's rule, tests/test_data.py)."""
    sizes = [(350, 400), (500, 333), (333, 500), (64, 64), (100, 20), (20, 100), (3, 50), (1, 1), (375, 500)] * 5
    seeds = [order.sample_seed(7, 3, p) for p in range(len(sizes))]
    got = imagenet.crop_params(seeds, [h for h, _ in sizes], [w for _, w in sizes])
    for k, (seed, (h, w)) in enumerate(zip(seeds, sizes)):
        one = ResizedCropFlip().draw(torch.Generator().manual_seed(seed), 1, h, w)
        for key in ("i", "j", "h", "w", "flip"):  # integer-valued: exact
            assert got[key][k].item() == one[key][0].item(), (key, h, w)
        assert 0 <= got["i"][k] and got["i"][k] + got["h"][k] <= h and 0 <= got["j"][k] and got["j"][k] + got["w"][k] <= w
    assert got["flip"].any() and not got["flip"].all()


def test_crops_depend_on_seed_and_image_size_only(tmp_path, monkeypatch):
    """The stream's crops are what crop_params gives for the positions' seeds and the files' sizes
    as the file headers state them (PIL, no decoding): nothing of the decode device or of the
    decoder enters, so a CUDA run draws the very boxes this CPU run draws."""
    write_image_folder(tmp_path, num_classes=2, per_class_train=6, per_class_val=1, image_size=36, image_format="jpeg")
    seen = []
    real = imagenet.crop_params
    monkeypatch.setattr(imagenet, "crop_params", lambda s, h, w: seen.append((list(s), h, w)) or real(s, h, w))
    bundle = D.open_data(folder_cfg(tmp_path), CPU, num_workers=2)
    batches = take(bundle.train_stream(5, 4, 0), 4)  # 3 per epoch: crosses into epoch 1
    assert len(seen) >= 4  # the producer may have made a batch or two past the ones taken
    files = bundle.train.samples
    for it, ((x, y), (seeds, heights, widths)) in enumerate(zip(batches, seen)):
        epoch, step = divmod(it, 3)
        perm = order.epoch_permutation(5, epoch, len(files)).tolist()
        positions = range(step * 4, step * 4 + 4)
        assert seeds == [order.sample_seed(5, epoch, p) for p in positions]
        sizes = [Image.open(files[perm[p]][0]).size for p in positions]  # (width, height)
        assert (heights, widths) == ([s[1] for s in sizes], [s[0] for s in sizes])
        assert y.tolist() == [files[perm[p]][1] for p in positions]


def test_train_crops_against_torchvision_resized_crop(tmp_path):
    """Each training image is the decoded file's crop with its position's box (crop_params, the
    per-image draws: test_batched_crop_boxes_equal_the_per_image_draws), resampled in one batched
    roi_align call, flipped where drawn. Two independent references, per image:
    - an enlarged crop (h, w <= side) is plain bilinear interpolation: torchvision's resized_crop
      (+ hflip), which is what the per-image path computed before; torchvision on a uint8 tensor
      rounds to integers (<= 0.5) and we do not: bound 0.5, plus 1e-3 for the float32
      normalise/un-normalise of values up to 255;
    - any crop is the mean of ceil(h/side) x ceil(w/side) bilinear samples per output pixel:
      F.interpolate of the crop alone to (side * sh, side * sw), average-pooled by (sh, sw)
      (float32 throughout: 1e-3 on a 0..255 scale)."""
    import math

    import torch.nn.functional as F

    write_image_folder(tmp_path, num_classes=2, per_class_train=8, per_class_val=1, image_size=40, image_format="jpeg")
    bundle = D.open_data(folder_cfg(tmp_path), CPU, num_workers=1)
    (x, y), = take(bundle.train_stream(3, 16, 0), 1)
    perm = order.epoch_permutation(3, 0, 16).tolist()
    from torchvision.io import decode_jpeg, read_file

    enlarged = shrunk = 0
    for p in range(16):
        img = decode_jpeg(read_file(bundle.train.samples[perm[p]][0]))
        box = imagenet.crop_params([order.sample_seed(3, 0, p)], [img.shape[1]], [img.shape[2]])
        i, j, h, w = (int(box[k][0]) for k in ("i", "j", "h", "w"))
        got = x[p] * STD[0] + MEAN[0]
        flip = bool(box["flip"][0])
        if h <= 32 and w <= 32:
            ref = TF.resized_crop(img, i, j, h, w, [32, 32], antialias=True).float()
            assert (got - (ref.flip(-1) if flip else ref)).abs().max() <= 0.5 + 1e-3
            enlarged += 1
        else:
            shrunk += 1
        sh, sw = math.ceil(h / 32), math.ceil(w / 32)
        crop = img[None, :, i : i + h, j : j + w].float()
        ref = F.avg_pool2d(F.interpolate(crop, size=(32 * sh, 32 * sw), mode="bilinear", align_corners=False), (sh, sw))[0]
        assert (got - (ref.flip(-1) if flip else ref)).abs().max() <= 1e-3
    assert enlarged and shrunk  # both cases met


def test_resized_crops_split_large_batches_into_canvases(monkeypatch):
    """A batch whose crops do not fit one canvas is resampled in several roi_align calls, with
    the same values as in one call."""
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 30 + 7 * k, 50 - 3 * k), dtype=torch.uint8, generator=gen) for k in range(6)]
    boxes = imagenet.crop_params([order.sample_seed(1, 0, p) for p in range(6)], [im.shape[1] for im in images],
                                 [im.shape[2] for im in images])
    whole = imagenet.resized_crops(images, boxes, 24)
    monkeypatch.setattr(imagenet, "CANVAS_BYTES", 3 * 4 * 40 * 40)  # about one crop per canvas
    assert torch.equal(imagenet.resized_crops(images, boxes, 24), whole)


def test_stream_same_for_any_worker_count_and_resumes(tmp_path):
    write_image_folder(tmp_path, num_classes=3, per_class_train=5, per_class_val=1, image_size=36, image_format="jpeg")
    one = D.open_data(folder_cfg(tmp_path), CPU, num_workers=1)
    full = take(one.train_stream(2, 4, 0), 8)  # ipe = 3: crosses two epoch boundaries
    many = D.open_data(folder_cfg(tmp_path), CPU, num_workers=3)
    for start in (0, 4):
        tail = take(many.train_stream(2, 4, start), 8 - start)
        for (xa, ya), (xb, yb) in zip(full[start:], tail):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # Progressive resizing: the side follows the epoch, also when resuming inside the ramp.
    ramp = D.open_data(folder_cfg(tmp_path, min_res=16, max_res=32, end_ramp_epoch=2), CPU, num_workers=2)
    sides = [x.shape[-1] for x, _ in take(ramp.train_stream(2, 4, 0), 7)]
    # 3 iterations per epoch; epoch 1 is mid-ramp: 24 px, rounded to the nearest multiple of 32
    # (ffcv's rounding, trainers/data/resolution.py) is 32, kept within [16, 32].
    assert sides == [16, 16, 16, 32, 32, 32, 32]
    assert take(ramp.train_stream(2, 4, 6), 1)[0][0].shape[-1] == 32


def test_epoch_plan_visits_each_example_once():
    cfg = DataConfig(name="imagenet", image_size=32)
    plans = list(itertools.islice(imagenet.train_plans(10, 1, 3, 0, 3, True, cfg), 6))
    for epoch in range(2):
        seen = [i for p in plans[3 * epoch : 3 * epoch + 3] for i in p.indices]
        assert len(seen) == 9 and len(set(seen)) == 9  # drop_last: one example sits out
    assert [p.indices for p in plans[1:]] == [p.indices for p in itertools.islice(imagenet.train_plans(10, 1, 3, 1, 3, True, cfg), 5)]


def test_eval_covers_the_split_once_with_its_labels(tmp_path):
    write_image_folder(tmp_path, num_classes=3, per_class_train=2, per_class_val=3, image_size=36, image_format="jpeg")
    bundle = D.open_data(folder_cfg(tmp_path), CPU, num_workers=2)
    batches = list(bundle.eval_batches("test", 4))
    assert [len(y) for _, y in batches] == [4, 4, 1]
    assert torch.cat([y for _, y in batches]).tolist() == [label for _, label in bundle.test.samples]
    assert torch.bincount(torch.cat([y for _, y in batches])).tolist() == [3, 3, 3]
    again = list(bundle.eval_batches("test", 4))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))


# ---- files nvJPEG cannot take ----------------------------------------------------------------


def test_jpeg_components_routes_only_colour_jpegs_to_the_batched_decoder():
    arr = photo()
    assert jpeg_components(encode(arr)) == 3
    assert jpeg_components(encode(arr, progressive=True)) == 3
    assert jpeg_components(encode(arr, "L")) == 1
    assert jpeg_components(encode(arr, "CMYK")) == 4
    assert jpeg_components(encode(arr, fmt="PNG")) is None
    assert jpeg_components(b"") is None and jpeg_components(b"\xff\xd8\xff") is None
    assert jpeg_components(encode(arr)[:20]) is None  # cut before the frame header


def test_bad_files_are_decoded_on_the_cpu_or_named(tmp_path, capfd):
    """A batch holding every kind of file ImageNet-scale data throws at a loader: the colour JPEGs
    still decode, CMYK, grey and PNG-as-JPEG go to the CPU decoders, the truncated, corrupt and
    unreadable files are named and replaced by a mean-colour image; nothing raises."""
    arr = photo(40, 48)
    good = encode(arr, quality=95)
    files = {
        "good.JPEG": good,
        "cmyk.JPEG": encode(arr, "CMYK", quality=95),
        "grey.JPEG": encode(arr, "L"),
        "png.JPEG": encode(arr, fmt="PNG"),
        "truncated.JPEG": good[: len(good) // 2],
        "corrupt.JPEG": b"\xff\xd8\xff\xe0" + b"not a jpeg at all" * 20,
    }
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    contents = [data for data in files.values()] + [FileNotFoundError(2, "No such file or directory")]
    paths.append(str(tmp_path / "gone.JPEG"))
    stats = DecodeStats("cpu")
    out = decode_batch(contents, paths, CPU, stats, imagenet.MEAN)
    assert len(out) == 7 and all(o.dtype == torch.uint8 and o.shape[0] == 3 for o in out)
    # The truncated colour JPEG makes the batched call fail: the good one is then decoded alone.
    stats = stats.as_dict()
    assert sorted(stats.pop("failed_files")) == sorted(paths[4:])
    assert stats == {"device": "cpu", "batched": 0, "single": 1, "cpu": 3, "failed": 3}
    err = capfd.readouterr().err
    for p in (paths[4], paths[5], paths[6]):
        assert p in err
    ref = torch.from_numpy(np.array(Image.open(io.BytesIO(good)).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(out[0], ref)  # libjpeg-turbo both: the same pixels
    for k in (1, 2, 3):
        assert out[k].shape == (3, 40, 48)
    # PNG is lossless: exactly the pixels written.
    assert torch.equal(out[3], torch.from_numpy(arr).permute(2, 0, 1))
    # CMYK -> RGB: PIL's conversion of the same file is the reference; the two converters
    # differ by rounding only (one level), and the JPEG round trip keeps it near the source.
    cmyk_ref = torch.from_numpy(np.array(Image.open(io.BytesIO(files["cmyk.JPEG"])).convert("RGB"))).permute(2, 0, 1)
    assert (out[1].int() - cmyk_ref.int()).abs().max() <= 1
    for k in (4, 5, 6):
        colour = torch.tensor([round(255 * m) for m in imagenet.MEAN], dtype=torch.uint8)
        assert torch.equal(out[k], colour.view(3, 1, 1).expand_as(out[k]))


def test_bad_files_in_a_folder_never_stop_the_stream(tmp_path, capfd):
    write_image_folder(tmp_path, num_classes=2, per_class_train=4, per_class_val=2, image_size=36, image_format="jpeg")
    train = sorted((tmp_path / "train").rglob("*.jpg"))
    arr = photo(40, 40)
    train[0].write_bytes(encode(arr, "CMYK"))
    train[1].write_bytes(encode(arr, fmt="PNG"))  # a PNG with a .jpg name, as ImageNet has
    train[2].write_bytes(train[2].read_bytes()[:300])  # truncated
    val = sorted((tmp_path / "val").rglob("*.jpg"))
    val[0].write_bytes(b"garbage")
    bundle = D.open_data(folder_cfg(tmp_path), CPU, num_workers=2)
    # Finite streams first (the training stream's producer runs ahead, so its counts are not exact).
    ev_train = list(bundle.eval_batches("train", 4))  # each training file once
    ev = list(bundle.eval_batches("test", 8))
    stats = bundle.stats.as_dict()
    assert stats["failed_files"] == [str(train[2]), str(val[0])]
    assert (stats["failed"], stats["cpu"]) == (2, 2)  # truncated + garbage; CMYK + PNG
    assert [x.shape for x, _ in ev_train] == [(4, 3, 32, 32)] * 2
    batches = take(bundle.train_stream(0, 4, 0), 4)  # two epochs of 8 files: each file twice
    assert [x.shape for x, _ in batches] == [(4, 3, 32, 32)] * 4
    assert bundle.stats.as_dict()["failed_files"] == [str(train[2]), str(val[0])]
    err = capfd.readouterr().err
    assert err.count(str(train[2])) == 1 and str(val[0]) in err  # named once, not every epoch
    # The replaced example is the mean colour: zero after normalisation, up to the rounding of
    # the mean to a uint8 level (0.5 / (255 * std) < 0.01).
    assert ev[0][0][0].abs().max() < 0.01


# ---- the prefetch thread ----------------------------------------------------------------


def _prefetch_threads() -> int:
    # the decoding producer and the finishing stage (crop, resize, normalise) after it
    return sum(t.name.startswith("lth-prefetch") and t.is_alive() for t in threading.enumerate())


def test_closing_a_stream_stops_its_thread(tmp_path):
    write_image_folder(tmp_path, num_classes=2, per_class_train=4, per_class_val=1, image_size=36, image_format="jpeg")
    bundle = D.open_data(folder_cfg(tmp_path), CPU, num_workers=2)
    for t in threading.enumerate():  # streams earlier tests closed: their threads may still be ending
        if t.name.startswith("lth-prefetch"):
            t.join(timeout=10)
    before = _prefetch_threads()
    stream = bundle.train_stream(0, 2, 0)
    assert _prefetch_threads() == before  # nothing starts before the first batch is asked for
    next(stream)
    assert _prefetch_threads() == before + 2
    stream.close()
    for t in threading.enumerate():
        if t.name.startswith("lth-prefetch"):
            t.join(timeout=10)
    assert _prefetch_threads() == before


def test_a_producer_error_reaches_the_consumer():
    def make(plan, contents):
        if plan == 2:
            raise ValueError("plan 2 is broken")
        return (torch.tensor(plan),)

    got = []
    with pytest.raises(ValueError, match="plan 2 is broken"):
        for (t,) in Prefetcher(range(5), lambda plan: [], make, workers=2, depth=1, device=CPU):
            got.append(int(t))
    assert got == [0, 1]
    assert [int(t) for (t,) in Prefetcher(range(5), lambda plan: [], lambda p, c: (torch.tensor(p),), 3, 2, CPU)] == list(range(5))
    # Two stages (decode, then finish): the order kept, an error of either stage raised in the consumer.
    two = Prefetcher(range(5), lambda plan: [], lambda p, c: p * 10, 3, 2, CPU, finish=lambda p, made: (torch.tensor(made + p),))
    assert [int(t) for (t,) in two] == [11 * p for p in range(5)]
    for broken in ("make", "finish"):
        def fail(p, x, where=broken, stage=None):
            if p == 2 and where == stage:
                raise ValueError(f"{stage} of plan 2 is broken")
            return x
        stages = Prefetcher(range(5), lambda plan: [], lambda p, c: fail(p, p, stage="make"), 2, 1, CPU,
                            finish=lambda p, made: (torch.tensor(fail(p, made, stage="finish")),))
        got = []
        with pytest.raises(ValueError, match=f"{broken} of plan 2 is broken"):
            for (t,) in stages:
                got.append(int(t))
        assert got == [0, 1]


# ---- workers from the job's CPUs ---------------------------------------------------------------


def test_workers_come_from_the_cpus_given():
    assert loader_workers(16) == 15 and loader_workers(1) == 1 and loader_workers(2) == 1
    assert loader_workers() == max(1, len(os.sched_getaffinity(0)) - 1) == max(1, available_cpus() - 1)
    with pytest.raises(ValueError, match="cpus must be >= 1"):
        loader_workers(0)
    assert Runtime(device=CPU, cpus=9).loader_workers() == 8


def test_train_opens_the_loader_with_the_runtimes_cpus(tmp_path, monkeypatch):
    from trainers import train as train_mod
    from trainers.jobs import TrainConfig, TrainJob, TrainPaths

    write_image_folder(tmp_path / "data", num_classes=2, per_class_train=4, per_class_val=2, image_size=36, image_format="jpeg")
    opened = []
    real = D.open_data

    def spy(cfg, device, cache=None, *, num_workers=None):
        opened.append(num_workers)
        return real(cfg, device, cache, num_workers=num_workers)

    monkeypatch.setattr(train_mod, "open_data", spy)
    job = TrainJob(TrainConfig(model="mlp_300_100", data=folder_cfg(tmp_path / "data"), iterations=2, batch_size=4,
                               eval_train_examples=4), init_seed=0, data_seed=0)
    result = train_mod.train(job, TrainPaths(out_dir=str(tmp_path / "out")), Runtime(device=CPU, cpus=5))
    assert opened == [4] and result.end_iter == 2


# ---- the benchmark names its path and fails on a fallback ------------------------------------


def test_e2e_benchmark_reports_its_path_and_fails_on_a_fallback(tmp_path, capsys):
    from benchmarks import run
    from benchmarks.imagenet_e2e import write_jpeg_folder

    made = write_jpeg_folder(str(tmp_path), train_files=96, val_files=4, classes=2)
    assert made["files"] == 100 and 60 < made["mean_kb"] < 130  # ImageNet-like: about 93 kB at 400x350
    args = ["--device", "cpu", "--sections", "imagenet_e2e", "--quick", "--models", "mlp_300_100", "--cpus", "3",
            "--data-dir", str(tmp_path), "--repeats", "1"]
    assert run.main(args) == 0
    out = capsys.readouterr().out
    assert "decode on cpu (batched decode_jpeg), 2 reader threads" in out and "| ok" in out
    # Two PNGs in 96 files (2%) is more than a real ImageNet folder holds: a fallback, exit 1.
    pngs = sorted((tmp_path / "train").rglob("*.JPEG"))[:2]
    for p in pngs:
        p.write_bytes(encode(photo(), fmt="PNG"))
    assert run.main(args) == 1
    assert "FELL BACK" in capsys.readouterr().out


# The CUDA (nvJPEG) stream against this CPU stream: tests/test_gpu.py, the GPU suite.
