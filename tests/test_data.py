"""The data layer: order and resume determinism, every source's shapes and labels, augmentation
against hand-computed crops, the on-disk formats against torchvision's readers, bad input."""
from __future__ import annotations

import itertools
import pickle

import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF

import trainers.data.sources as D
from trainers.data import order
from trainers.data.export import write_cifar_dir, write_image_folder
from trainers.data.resident import PadCropFlip, ResizedCropFlip
from trainers.jobs import DataConfig

torch.set_num_threads(1)
CPU = torch.device("cpu")


def take(stream, k):
    return list(itertools.islice(stream, k))


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def synthetic(**kw) -> DataConfig:
    base = dict(name="synthetic", num_train=200, num_test=50, num_classes=5)
    return DataConfig(**{**base, **kw})


# ---- order ---------------------------------------------------------------------------------


def test_mix_is_stable_and_sensitive():
    # Pinned: a change here silently changes every data order of every stored sweep.
    assert order._splitmix64(0) == 0xE220A8397B1DCDAF  # the published first output of splitmix64 from state 0
    assert order.mix(1, 2, 3) == order.mix(1, 2, 3) == 792240227391077375
    assert len({order.mix(s, e) for s in range(20) for e in range(20)}) == 400
    assert order.mix(0, 1) != order.mix(1, 0)


def test_epoch_permutation_is_a_seeded_permutation():
    p = order.epoch_permutation(3, 7, 100)
    assert p.dtype == torch.int64 and p.device.type == "cpu"
    assert torch.equal(p.sort().values, torch.arange(100))
    assert torch.equal(p, order.epoch_permutation(3, 7, 100))
    assert not torch.equal(p, order.epoch_permutation(3, 8, 100))
    assert not torch.equal(p, order.epoch_permutation(4, 7, 100))


def test_two_seeds_same_examples_different_order():
    bundle = D.open_data(DataConfig(name="digits"), CPU)
    ipe = bundle.iterations_per_epoch(100)
    assert ipe == 1437 // 100
    epochs = {}
    for seed in (0, 1):
        batches = take(bundle.train_stream(seed, 100, 0), ipe)
        epochs[seed] = (torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))
    (x0, y0), (x1, y1) = epochs[0], epochs[1]
    assert not torch.equal(y0, y1)
    # Over a full epoch (ipe * B of 1437 examples) both see distinct examples of the training set.
    # Batches are gathered copies of rows, so each row is identified exactly by its bytes (no
    # float arithmetic, whose rounding depends on the BLAS kernel chosen for each shape).
    index = {row.numpy().tobytes(): i for i, row in enumerate(bundle.train_x.reshape(len(bundle.train_x), -1))}
    assert len(index) == len(bundle.train_x)  # the digits training rows are pairwise distinct
    ids0, ids1 = ([index[row.numpy().tobytes()] for row in x.reshape(len(x), -1)] for x in (x0, x1))
    assert len(set(ids0)) == len(ids0) and len(set(ids1)) == len(ids1)
    # Seed 0 and 1 drop different leftovers; on their common examples the labels agree.
    common = set(ids0) & set(ids1)
    assert len(common) > 1300
    label0 = dict(zip(ids0, y0.tolist()))
    label1 = dict(zip(ids1, y1.tolist()))
    assert all(label0[i] == label1[i] == int(bundle.train_y[i]) for i in common)


@pytest.mark.parametrize("cfg", [DataConfig(name="digits"), synthetic(), synthetic(image_size=64, num_train=96)],
                         ids=["digits", "synthetic32", "synthetic64"])
def test_stream_is_deterministic_and_resumes_bitwise(cfg):
    bundle = D.open_data(cfg, CPU)
    b = 32
    ipe = bundle.iterations_per_epoch(b)
    full = take(bundle.train_stream(5, b, 0), 2 * ipe + 2)
    assert_same_batches(full, take(bundle.train_stream(5, b, 0), 2 * ipe + 2))
    for j in (ipe // 2, ipe, ipe + 1, 2 * ipe - 1):  # mid-epoch, on and across epoch boundaries
        assert_same_batches(full[j:], take(bundle.train_stream(5, b, j), len(full) - j))
    other = take(bundle.train_stream(6, b, 0), 1)[0]
    assert not torch.equal(other[0], full[0][0])


def test_cache_returns_the_loaded_bundle():
    cache: dict = {}
    a = D.open_data(synthetic(), CPU, cache)
    assert D.open_data(synthetic(), CPU, cache) is a
    assert D.open_data(synthetic(seed=1), CPU, cache) is not a
    assert len(cache) == 2


def test_iterations_per_epoch_and_bad_batch_size():
    bundle = D.open_data(synthetic(), CPU)
    assert bundle.iterations_per_epoch(64) == 3
    with pytest.raises(ValueError, match="larger than the training set"):
        bundle.iterations_per_epoch(201)
    with pytest.raises(ValueError, match="start_iter"):
        next(bundle.train_stream(0, 8, -1))
    with pytest.raises(ValueError, match="split"):
        next(bundle.eval_batches("val", 8))


# ---- sources ---------------------------------------------------------------------------------


def test_digits_shapes_and_standardisation():
    bundle = D.open_data(DataConfig(name="digits"), CPU)
    assert bundle.info == D.describe(DataConfig(name="digits")) == D.DataInfo((64,), 10, 1437, 360)
    x, y = next(bundle.train_stream(0, 50, 0))
    assert x.shape == (50, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    mean = bundle.train_x.mean(0)
    assert mean.abs().max() < 1e-5  # standardised with the training statistics
    test = list(bundle.eval_batches("test", 100))
    assert [len(y) for _, y in test] == [100, 100, 100, 60]
    assert set(torch.cat([y for _, y in test]).tolist()) == set(range(10))


@pytest.mark.parametrize("side", [32, 64])
def test_synthetic_shapes_and_generation_seed(side):
    cfg = synthetic(image_size=side, channels=3)
    info = D.describe(cfg)
    assert info == D.DataInfo((3, side, side), 5, 200, 50)
    bundle = D.open_data(cfg, CPU)
    assert bundle.info == info
    x, y = next(bundle.train_stream(0, 16, 0))
    assert x.shape == (16, 3, side, side) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert ((0 <= y) & (y < 5)).all()
    assert sum(len(y) for _, y in bundle.eval_batches("test", 16)) == 50
    assert torch.equal(bundle.train_x, D.open_data(cfg, CPU).train_x)
    assert not torch.equal(bundle.train_x, D.open_data(synthetic(image_size=side, seed=1), CPU).train_x)


def test_synthetic_is_learnable():
    bundle = D.open_data(synthetic(num_train=300, num_test=300, num_classes=10), CPU)
    xtr, ytr = bundle.train_x.float().flatten(1), bundle.train_y
    xte, yte = bundle.test_x.float().flatten(1), bundle.test_y
    means = torch.stack([xtr[ytr == k].mean(0) for k in range(10)])
    accuracy = (torch.cdist(xte, means).argmin(1) == yte).float().mean()
    assert accuracy > 0.5  # chance: 0.1


def test_eval_train_subset_is_fixed_and_unaugmented():
    bundle = D.open_data(synthetic(), CPU)
    a = list(bundle.eval_batches("train", 16, max_examples=40))
    b = list(bundle.eval_batches("train", 16, max_examples=40))
    assert_same_batches(a, b)
    assert [len(y) for _, y in a] == [16, 16, 8]
    idx = order.eval_train_subset(200, 40)
    x = torch.cat([x for x, _ in a])
    assert torch.equal(x, bundle._finish(bundle.train_x[idx]))  # the stored pixels, no augmentation
    test = list(bundle.eval_batches("test", 64, max_examples=10))
    assert torch.equal(test[0][1], bundle.test_y[:10])


# ---- augmentation ----------------------------------------------------------------------------


def test_augmentation_happens_only_when_asked():
    aug = D.open_data(synthetic(), CPU)
    plain = D.open_data(synthetic(augment=False), CPU)
    (xa, ya), (xp, yp) = next(aug.train_stream(3, 32, 0)), next(plain.train_stream(3, 32, 0))
    assert torch.equal(ya, yp)  # same data seed: same examples
    assert not torch.equal(xa, xp)
    idx = order.epoch_permutation(3, 0, 200)[:32]
    assert torch.equal(xp, plain._finish(plain.train_x[idx]))


def test_pad_crop_flip_matches_hand_slicing():
    x = torch.randint(0, 256, (6, 3, 10, 12), dtype=torch.uint8)
    aug = PadCropFlip(pad=2)
    params = aug.draw(torch.Generator().manual_seed(0), 6, 10, 12)
    params["flip"][:2] = torch.tensor([True, False])
    out = aug.apply(x, params)
    for k in range(6):
        padded = torch.zeros(3, 14, 16, dtype=torch.uint8)
        padded[:, 2:12, 2:14] = x[k]
        dy, dx = int(params["dy"][k]), int(params["dx"][k])
        crop = padded[:, dy : dy + 10, dx : dx + 12]
        if params["flip"][k]:
            crop = crop.flip(-1)
        assert torch.equal(out[k], crop.float())


def test_resized_crop_flip_matches_torchvision_crop_then_resize():
    x = torch.rand(4, 3, 64, 64) * 255
    aug = ResizedCropFlip()
    params = aug.draw(torch.Generator().manual_seed(1), 4, 64, 64)
    assert ((params["h"] <= 64) & (params["w"] <= 64) & (params["i"] + params["h"] <= 64) & (params["j"] + params["w"] <= 64)).all()
    out = aug.apply(x, params)
    for k in range(4):
        i, j, h, w = (int(params[n][k]) for n in ("i", "j", "h", "w"))
        ref = TF.resized_crop(x[k], i, j, h, w, [64, 64], antialias=False)
        if params["flip"][k]:
            ref = ref.flip(-1)
        # grid_sample reads the pixels just outside the crop where crop-then-resize clamps: compare inside.
        assert torch.allclose(out[k][:, 2:-2, 2:-2], ref[:, 2:-2, 2:-2], atol=1e-2)
    full = {"i": torch.zeros(1), "j": torch.zeros(1), "h": torch.full((1,), 64.0), "w": torch.full((1,), 64.0), "flip": torch.tensor([True])}
    assert torch.allclose(aug.apply(x[:1], full), x[:1].flip(-1), atol=1e-3)


def test_resized_crop_params_cover_the_scale_range():
    params = ResizedCropFlip().draw(torch.Generator().manual_seed(0), 2000, 64, 64)
    area = params["h"] * params["w"] / 64**2
    assert area.min() >= 0.06 and area.max() <= 1.0 and area.min() < 0.15 and area.max() > 0.8
    assert 0.4 < params["flip"].float().mean() < 0.6


# ---- CIFAR ------------------------------------------------------------------------------------


@pytest.mark.parametrize("classes,reader", [(10, torchvision.datasets.CIFAR10), (100, torchvision.datasets.CIFAR100)])
def test_cifar_directory_round_trip(tmp_path, monkeypatch, classes, reader):
    # torchvision is the independent reader; our files are not the official archive: skip only its md5 checks.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    folder = write_cifar_dir(tmp_path, num_classes=classes, num_train=250, num_test=60, seed=2)
    name = f"cifar{classes}"
    ref_train = reader(str(tmp_path), train=True, download=False)
    ref_test = reader(str(tmp_path), train=False, download=False)
    for root in (tmp_path, folder):  # the parent directory or the batches directory
        cfg = DataConfig(name=name, root=str(root))
        D.check_available(cfg)
        bundle = D.open_data(cfg, CPU)
        assert bundle.info == D.describe(cfg) == D.DataInfo((3, 32, 32), classes, 250, 60)
        assert bundle.train_y.tolist() == list(ref_train.targets)
        assert bundle.test_y.tolist() == list(ref_test.targets)
        assert torch.equal(bundle.train_x, torch.from_numpy(ref_train.data).permute(0, 3, 1, 2))
        x, y = next(bundle.train_stream(0, 32, 0))
        assert x.shape == (32, 3, 32, 32) and y.dtype == torch.int64
    sub = D.open_data(DataConfig(name=name, root=str(tmp_path), num_train=100), CPU)
    assert sub.info.num_train == 100 and sub.info.num_test == 60


def test_cifar_pickles_have_the_official_keys(tmp_path):
    folder = write_cifar_dir(tmp_path, num_classes=10, num_train=50, num_test=10)
    with open(folder / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert entry["data"].dtype.name == "uint8" and entry["data"].shape == (10, 3072)
    assert len(entry["labels"]) == 10
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]
    )


# ---- image folders -------------------------------------------------------------------------


def _folder_cfg(root, **kw):
    return DataConfig(name="imagenet", root=str(root), image_size=32, **kw)


@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_image_folder_shapes_counts_and_eval_transform(tmp_path, image_format):
    write_image_folder(tmp_path, num_classes=3, per_class_train=6, per_class_val=2, image_size=40, seed=1,
                       image_format=image_format)
    cfg = _folder_cfg(tmp_path)
    D.check_available(cfg)
    info = D.describe(cfg)
    assert info == D.DataInfo((3, 32, 32), 3, 18, 6)
    bundle = D.open_data(cfg, CPU, num_workers=0)
    x, y = next(bundle.train_stream(0, 8, 0))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # Evaluation: torchvision's ImageFolder with PIL's Resize(eval side) + CenterCrop is the reference.
    ref = torchvision.datasets.ImageFolder(
        str(tmp_path / "val"),
        transform=torchvision.transforms.Compose([
            torchvision.transforms.Resize(round(32 * 8 / 7)),
            torchvision.transforms.CenterCrop(32),
            torchvision.transforms.PILToTensor(),
        ]),
    )
    batches = list(bundle.eval_batches("test", 4))
    xs, ys = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert ys.tolist() == [label for _, label in ref.samples]
    assert torch.bincount(ys).tolist() == [2, 2, 2]
    expected = torch.stack([ref[i][0] for i in range(len(ref))]).float()
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1) * 255
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1) * 255
    # Both resize with the same antialiased bilinear filter; PIL resizes in two separable passes and
    # rounds each to uint8 (<= 0.5 each; the second pass's convex weights do not grow the first's
    # error), ours stays in float32: at most 1.0 apart, plus 1e-3 for the float32 normalise and
    # un-normalise of values up to 255. Both decode JPEGs with libjpeg-turbo's default IDCT.
    diff = (xs * std + mean - expected).abs()
    assert diff.max() <= 1.0 + 1e-3
    assert diff.mean() < 0.5  # rounding errors, not a shifted or misplaced crop
    stats = bundle.stats.as_dict()
    assert stats["failed"] == 0
    # PNG files go to the CPU decoder; colour JPEGs to the device's batched decoder.
    assert (stats["cpu"] > 0, stats["batched"] > 0) == ((True, False) if image_format == "png" else (False, True))


def test_image_folder_stream_is_pure_in_seed_and_position(tmp_path):
    write_image_folder(tmp_path, num_classes=2, per_class_train=6, per_class_val=1, image_size=36)
    bundle = D.open_data(_folder_cfg(tmp_path), CPU, num_workers=0)
    full = take(bundle.train_stream(1, 4, 0), 5)  # ipe = 3: crosses an epoch boundary
    assert_same_batches(full[2:], take(bundle.train_stream(1, 4, 2), 3))
    with_workers = D.open_data(_folder_cfg(tmp_path), CPU, num_workers=2)
    assert_same_batches(full, take(with_workers.train_stream(1, 4, 0), 5))
    assert not torch.equal(full[0][0], take(bundle.train_stream(2, 4, 0), 1)[0][0])
    plain = D.open_data(_folder_cfg(tmp_path, augment=False), CPU, num_workers=0)
    (xp, yp), (xa, ya) = next(plain.train_stream(1, 4, 0)), full[0]
    assert torch.equal(yp, ya) and not torch.equal(xp, xa)


# ---- bad input -------------------------------------------------------------------------------


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown data set .mnist9.") as e:
        D.describe(DataConfig(name="mnist9"))
    for name in D.DATASETS:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="valid names"):
        D.check_available(DataConfig(name="mnist9"))


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagenet", "ffcv_cifar", "ffcv_imagenet"])
def test_missing_root_names_the_path(tmp_path, name):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        D.check_available(DataConfig(name=name, root=str(missing)))
    with pytest.raises(ValueError, match="data.root must be set"):
        D.check_available(DataConfig(name=name))
    # The planner can still size the job without the data.
    assert D.describe(DataConfig(name=name, root=str(missing))).num_train > 0


def test_cifar_dir_without_batches_and_corrupt_batches(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        D.check_available(DataConfig(name="cifar10", root=str(tmp_path)))
    folder = write_cifar_dir(tmp_path / "ok", num_classes=10, num_train=20, num_test=5)
    # Each damage makes pickle fail differently (UnpicklingError, ValueError, EOFError...):
    # every one is named by its file, for the planner (describe) and the loader alike.
    for damage in (b"not a pickle", b"garbage\n", b"", b"\x80\x04K\x07."):
        (folder / "data_batch_3").write_bytes(damage)
        cfg = DataConfig(name="cifar10", root=str(folder))
        with pytest.raises(ValueError, match="data_batch_3"):
            D.open_data(cfg, CPU)
        with pytest.raises(ValueError, match="data_batch_3"):
            D.describe(cfg)


def test_empty_image_folder(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    cfg = _folder_cfg(tmp_path)
    with pytest.raises(FileNotFoundError, match="empty image folder"):
        D.check_available(cfg)
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "val" / "cat").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        D.check_available(cfg)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train")):
        D.open_data(cfg, CPU, num_workers=0)
    only_train = tmp_path / "other"
    write_image_folder(only_train, num_classes=2, per_class_train=1, per_class_val=1, image_size=16)
    (only_train / "val" / "class_000").rename(only_train / "val" / "dog")
    with pytest.raises(ValueError, match="not in the training split"):
        D.open_data(_folder_cfg(only_train), CPU, num_workers=0)


def test_bad_synthetic_and_image_sizes():
    with pytest.raises(ValueError, match="num_classes"):
        D.describe(synthetic(num_classes=1))
    with pytest.raises(ValueError, match="eval_image_size"):
        D.describe(DataConfig(name="imagenet", image_size=64, eval_image_size=32))


@pytest.mark.parametrize("name, words", [
    ("cifar10", ["cs.toronto.edu/~kriz/cifar.html", "cifar-10-batches-py/ holds data_batch_1", "test_batch"]),
    ("cifar100", ["cifar-100-python.tar.gz", "cifar-100-python/ holds train, test, meta"]),
    ("imagenet", ["ILSVRC-2012", "train/<class>/*.JPEG", "val/<class>/*.JPEG"]),
    ("ffcv_imagenet", ["train.beton", "lth-beton --data imagenet", "make install", "libturbojpeg0-dev"]),
])
def test_a_missing_data_set_says_where_to_get_it_and_which_files_go_where(tmp_path, name, words):
    for root in (tmp_path / "nowhere", tmp_path):  # no directory; a directory without the files
        with pytest.raises(FileNotFoundError) as e:
            D.check_available(DataConfig(name=name, root=str(root)))
        assert all(w in str(e.value) for w in words), str(e.value)
        assert "pip install" not in str(e.value)


def test_ffcv_missing_points_at_the_readmes_install_route(monkeypatch):
    """lth-beton's and the readers' error when ffcv does not import: the README's route (make
    install with the native libraries), which the README really describes, not a pip extra."""
    import builtins
    from pathlib import Path

    from trainers.data.catalog import FFCV_INSTALL
    from trainers.data.ffcv_io import import_ffcv

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda n, *a, **k: (_ for _ in ()).throw(ImportError("no ffcv"))
                        if n == "ffcv" or n.startswith("ffcv.") else real(n, *a, **k))
    with pytest.raises(ImportError) as e:
        import_ffcv()
    assert FFCV_INSTALL in str(e.value) and "pip install" not in str(e.value)
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "apt-get install pkg-config libopencv-dev libturbojpeg0-dev" in readme and "## Two commands on a fresh machine" in readme
