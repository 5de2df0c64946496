"""FFCV: .beton round trips (writer -> readers), the lth-beton command, the ffcv_imagenet order."""
from __future__ import annotations

import itertools

import pytest
import torch

import trainers.data.sources as D
from trainers.data import order
from trainers.data.export import write_cifar_dir, write_image_folder
from trainers.data.beton_writer import main, write_beton
from trainers.jobs import DataConfig

torch.set_num_threads(1)
CPU = torch.device("cpu")

try:
    import ffcv  # noqa: F401

    FFCV_ERROR = None
except Exception as e:  # an optional extra: without it only the error paths are testable
    FFCV_ERROR = repr(e)
needs_ffcv = pytest.mark.skipif(FFCV_ERROR is not None, reason=f"ffcv is not importable: {FFCV_ERROR}")

SOURCE = DataConfig(name="synthetic", num_train=100, num_test=40, num_classes=5, seed=3)


@pytest.fixture(scope="module")
def betons(tmp_path_factory):
    """Written once per module: numba compiles ffcv's pipelines on first use, which takes a while."""
    base = tmp_path_factory.mktemp("ffcv")
    write_beton(SOURCE, base / "synthetic")
    folder = write_image_folder(base / "images", num_classes=3, per_class_train=6, per_class_val=2, image_size=40)
    write_beton(DataConfig(name="imagenet", root=str(folder), image_size=32), base / "images_beton", max_resolution=48)
    return base


@needs_ffcv
def test_ffcv_cifar_round_trip_is_exact(betons):
    cfg = DataConfig(name="ffcv_cifar", root=str(betons / "synthetic"))
    D.check_available(cfg)
    bundle = D.open_data(cfg, CPU, num_workers=1)
    ref = D.open_data(SOURCE, CPU)
    assert bundle.info == D.describe(cfg) == ref.info
    assert torch.equal(bundle.train_x, ref.train_x) and torch.equal(bundle.test_x, ref.test_x)  # raw pixels
    assert torch.equal(bundle.train_y, ref.train_y) and torch.equal(bundle.test_y, ref.test_y)
    sub_cfg = DataConfig(name="ffcv_cifar", root=str(betons / "synthetic"), num_train=50)
    sub = D.open_data(sub_cfg, CPU, num_workers=1)
    assert sub.info == D.describe(sub_cfg) == D.DataInfo((3, 32, 32), 5, 50, 40)
    full = list(itertools.islice(bundle.train_stream(2, 16, 0), 9))
    resumed = list(itertools.islice(bundle.train_stream(2, 16, 5), 4))
    for (xa, ya), (xb, yb) in zip(full[5:], resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@needs_ffcv
def test_lth_beton_command_converts_a_cifar_directory(tmp_path, capsys):
    write_cifar_dir(tmp_path / "cifar", num_classes=10, num_train=60, num_test=20, seed=1)
    out = tmp_path / "beton"
    assert main(["--data", "cifar10", "--root", str(tmp_path / "cifar"), "--out", str(out)]) == 0
    assert (out / "train.beton").is_file() and (out / "test.beton").is_file()
    converted = D.open_data(DataConfig(name="ffcv_cifar", root=str(out)), CPU, num_workers=1)
    original = D.open_data(DataConfig(name="cifar10", root=str(tmp_path / "cifar")), CPU)
    assert torch.equal(converted.train_y, original.train_y) and torch.equal(converted.test_x, original.test_x)
    before = (out / "train.beton").read_bytes()
    assert main(["--data", "cifar10", "--root", str(tmp_path / "cifar"), "--out", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (out / "train.beton").read_bytes() == before
    assert main(["--data", "digits", "--out", str(tmp_path / "d")]) == 2
    assert "not images" in capsys.readouterr().err


@needs_ffcv
# numba's finaliser of ffcv's compiled decoders sometimes raises a KeyError when a Loader is
# collected (numba internals, harmless): pytest would report it as an unraisable exception.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ffcv_imagenet_order_is_ours(betons):
    cfg = DataConfig(name="ffcv_imagenet", root=str(betons / "images_beton"), image_size=32)
    info = D.describe(cfg)
    assert info == D.DataInfo((3, 32, 32), 3, 18, 6)
    bundle = D.open_data(cfg, CPU, num_workers=1)
    folder = D.open_data(DataConfig(name="imagenet", root=str(betons / "images"), image_size=32), CPU, num_workers=0)
    train_labels = torch.tensor([label for _, label in folder.train.samples])
    test_labels = torch.tensor([label for _, label in folder.test.samples])
    batches = list(itertools.islice(bundle.train_stream(4, 4, 0), 6))  # ipe = 4: into the second epoch
    for it, (x, y) in enumerate(batches):
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
        epoch, step = divmod(it, 4)
        expected = train_labels[order.epoch_permutation(4, epoch, 18)[step * 4 : step * 4 + 4]]
        assert torch.equal(y, expected)
    resumed = list(itertools.islice(bundle.train_stream(4, 4, 3), 3))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches[3:], resumed))
    evaluated = list(bundle.eval_batches("test", 4))
    assert torch.equal(torch.cat([y for _, y in evaluated]), test_labels)
    assert evaluated[0][0].shape == (4, 3, 32, 32)
    assert sum(len(y) for _, y in bundle.eval_batches("train", 5, max_examples=7)) == 7


@needs_ffcv
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ffcv_imagenet_progressive_resizing(betons):
    # The decoder's output side follows the ramp epoch by epoch; evaluation keeps image_size.
    cfg = DataConfig(name="ffcv_imagenet", root=str(betons / "images_beton"), image_size=32,
                     min_res=32, max_res=64, start_ramp_epoch=0, end_ramp_epoch=1)
    bundle = D.open_data(cfg, CPU, num_workers=1)
    batches = list(itertools.islice(bundle.train_stream(4, 4, 0), 10))  # ipe = 4: epochs 0, 1, 2
    assert [x.shape for x, _ in batches] == [(4, 3, 32, 32)] * 4 + [(4, 3, 64, 64)] * 6
    resumed = list(itertools.islice(bundle.train_stream(4, 4, 5), 3))  # mid-epoch 1: already 64
    assert [x.shape[-1] for x, _ in resumed] == [64] * 3
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches[5:], resumed))
    assert next(iter(bundle.eval_batches("test", 4)))[0].shape == (4, 3, 32, 32)
    plain = D.open_data(DataConfig(name="ffcv_imagenet", root=str(betons / "images_beton"), image_size=32,
                                   augment=False, min_res=32, max_res=64, end_ramp_epoch=1), CPU, num_workers=1)
    assert [x.shape[-1] for x, _ in itertools.islice(plain.train_stream(0, 4, 3), 2)] == [32, 64]


def test_missing_beton_names_the_file(tmp_path):
    (tmp_path / "train.beton").write_bytes(b"")
    for name in ("ffcv_cifar", "ffcv_imagenet"):
        with pytest.raises(FileNotFoundError, match=str(tmp_path / "test.beton")):
            D.check_available(DataConfig(name=name, root=str(tmp_path)))


@needs_ffcv
def test_corrupt_beton_is_a_clear_error(tmp_path):
    (tmp_path / "train.beton").write_bytes(b"\x00" * 64)
    (tmp_path / "test.beton").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="train.beton: not a readable .beton"):
        D.open_data(DataConfig(name="ffcv_cifar", root=str(tmp_path)), CPU, num_workers=1)
