"""Progressive resizing: the schedule against hand values, the training streams' sizes per epoch
(synthetic 64 px+ and image folders), resume determinism mid-ramp, and bad values named."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import trainers.data.sources as D
from orchestrator.spec import SpecError, load_spec
from trainers.data.export import write_image_folder
from trainers.data.resident import ResizedCropFlip
from trainers.data.resolution import train_resolution
from trainers.jobs import DataConfig

torch.set_num_threads(1)
CPU = torch.device("cpu")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def take(stream, k):
    return list(itertools.islice(stream, k))


def ramp(**kw) -> DataConfig:
    return DataConfig(name="imagenet", **kw)


# ---- the schedule --------------------------------------------------------------------------


def test_schedule_hand_values():
    ffcv16 = ramp(min_res=160, max_res=192, start_ramp_epoch=11, end_ramp_epoch=13)
    # Epoch 12 is halfway (176 = 5.5 x 32), rounded to the nearest multiple of 32, ties to even
    # as ffcv-imagenet's np.round: 192.
    assert [train_resolution(ffcv16, e) for e in (0, 5, 11, 12, 13, 14, 100)] == [160, 160, 160, 192, 192, 192, 192]
    wide = ramp(min_res=64, max_res=256, start_ramp_epoch=2, end_ramp_epoch=6)
    # 64 + 192 * (e - 2) / 4 = 112 (3.5 x 32), 160 (5 x 32), 208 (6.5 x 32) -> 128, 160, 192
    assert [train_resolution(wide, e) for e in range(8)] == [64, 64, 64, 128, 160, 192, 256, 256]
    # the same values as ffcv-imagenet's float formula, computed independently
    import numpy as np

    def ffcv(e, lo, hi, a, b):
        return lo if e <= a else hi if e >= b else int(np.round(np.interp([e], [a, b], [lo, hi])[0] / 32)) * 32

    for cfg, args in ((ffcv16, (160, 192, 11, 13)), (wide, (64, 256, 2, 6))):
        assert [train_resolution(cfg, e) for e in range(20)] == [ffcv(e, *args) for e in range(20)]
    # Endpoints that are not multiples of 32 are kept exactly; inside the ramp the side stays in range.
    odd = ramp(min_res=100, max_res=300, start_ramp_epoch=0, end_ramp_epoch=10)
    assert train_resolution(odd, 0) == 100 and train_resolution(odd, 10) == 300
    assert [train_resolution(odd, e) for e in (1, 2, 5, 9)] == [128, 128, 192, 288]
    step = ramp(min_res=64, max_res=128, start_ramp_epoch=3, end_ramp_epoch=3)
    assert [train_resolution(step, e) for e in (2, 3, 4)] == [64, 128, 128]
    assert train_resolution(ramp(), 7) is None  # no ramp: the data set's fixed size


def test_schedule_matches_a_float_interpolation():
    # Independent oracle: numpy's linear interpolation, rounded to 32 (np.round: ties to even,
    # as ffcv-imagenet), clipped to the range.
    cfg = ramp(min_res=96, max_res=416, start_ramp_epoch=3, end_ramp_epoch=40)
    for e in range(50):
        x = np.interp(e, [3, 40], [96, 416])
        want = 416 if e >= 40 else 96 if e <= 3 else int(np.clip(np.round(x / 32) * 32, 96, 416))
        assert train_resolution(cfg, e) == want, e


# ---- device-resident synthetic images --------------------------------------------------------


def synthetic(**kw) -> DataConfig:
    base = dict(name="synthetic", image_size=64, num_train=64, num_test=16, num_classes=4, seed=1)
    return DataConfig(**{**base, **kw})


RAMP = dict(min_res=32, max_res=96, start_ramp_epoch=1, end_ramp_epoch=3)  # sides per epoch: 32, 32, 64, 96


def test_synthetic_stream_sizes_per_epoch_and_resume():
    cfg = synthetic(**RAMP)
    bundle = D.open_data(cfg, CPU)
    assert bundle.info.input_shape == (3, 64, 64)  # evaluation and the model see the stored size
    ipe = bundle.iterations_per_epoch(16)
    assert ipe == 4
    full = take(bundle.train_stream(5, 16, 0), 4 * ipe + 1)
    sides = [x.shape[-1] for x, _ in full]
    assert sides == [32] * 8 + [64] * 4 + [96] * 5
    assert all(x.shape[:2] == (16, 3) and x.shape[-2] == x.shape[-1] for x, _ in full)
    for start in (6, 9, 13):  # mid-epoch 1, mid-ramp (epoch 2), epoch 3
        resumed = take(bundle.train_stream(5, 16, start), len(full) - start)
        for (xa, ya), (xb, yb) in zip(full[start:], resumed):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # Same draws as the fixed-size stream: at the stored side (epoch 2) the batches are identical.
    plain = take(D.open_data(synthetic(), CPU).train_stream(5, 16, 0), 3 * ipe)
    for (xa, ya), (xb, yb) in zip(full[2 * ipe : 3 * ipe], plain[2 * ipe :]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(full[0][1], plain[0][1]) and eval_equal(bundle, D.open_data(synthetic(), CPU))


def eval_equal(a, b) -> bool:
    (xa, ya), (xb, yb) = next(a.eval_batches("test", 16)), next(b.eval_batches("test", 16))
    return xa.shape[-1] == 64 and torch.equal(xa, xb) and torch.equal(ya, yb)


def test_resized_crop_output_size_against_interpolate():
    # The whole image as the crop, no flip: grid sampling at side s is bilinear resizing to s.
    x = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    params = {"i": torch.zeros(3), "j": torch.zeros(3), "h": torch.full((3,), 64.0), "w": torch.full((3,), 64.0),
              "flip": torch.zeros(3, dtype=torch.bool)}
    for side in (32, 96):
        got = ResizedCropFlip().apply(x, params, side)
        want = F.interpolate(x.float(), size=(side, side), mode="bilinear", align_corners=False)
        assert got.shape == (3, 3, side, side)
        assert torch.allclose(got, want, atol=1e-3)


def test_unaugmented_synthetic_stream_is_resized():
    bundle = D.open_data(synthetic(augment=False, **RAMP), CPU)
    plain = D.open_data(synthetic(augment=False), CPU)
    (x, y), (xp, yp) = next(bundle.train_stream(2, 16, 0)), next(plain.train_stream(2, 16, 0))
    assert x.shape[-1] == 32 and torch.equal(y, yp)
    # Normalisation is per-channel affine, so it commutes with (linear) resizing.
    assert torch.allclose(x, F.interpolate(xp, size=(32, 32), mode="bilinear", antialias=True, align_corners=False), atol=1e-4)


# ---- image folders ---------------------------------------------------------------------------


def test_image_folder_crop_size_changes_across_epochs(tmp_path):
    write_image_folder(tmp_path, num_classes=2, per_class_train=4, per_class_val=1, image_size=40, seed=3)
    base = dict(name="imagenet", root=str(tmp_path), image_size=32)
    cfg = DataConfig(**base, min_res=32, max_res=64, start_ramp_epoch=0, end_ramp_epoch=1)
    bundle = D.open_data(cfg, CPU, num_workers=0)
    full = take(bundle.train_stream(1, 4, 0), 5)  # ipe = 2: epochs 0, 1, 2
    assert [x.shape[-1] for x, _ in full] == [32, 32, 64, 64, 64]
    resumed = take(bundle.train_stream(1, 4, 3), 2)
    for (xa, ya), (xb, yb) in zip(full[3:], resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # Epoch 0 is at image_size: the same crops as the fixed-size stream, pixel for pixel.
    fixed = take(D.open_data(DataConfig(**base), CPU, num_workers=0).train_stream(1, 4, 0), 2)
    for (xa, ya), (xb, yb) in zip(full[:2], fixed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert next(bundle.eval_batches("test", 2))[0].shape[-1] == 32  # evaluation keeps image_size


# ---- bad values --------------------------------------------------------------------------------


BAD = [
    (dict(min_res=128), "data.max_res"),
    (dict(max_res=128), "data.min_res"),
    (dict(min_res=0, max_res=128), "data.min_res"),
    (dict(min_res=192, max_res=160), "data.min_res"),
    (dict(min_res=160, max_res=192, start_ramp_epoch=5, end_ramp_epoch=4), "data.end_ramp_epoch"),
    (dict(min_res=160, max_res=192, start_ramp_epoch=-1), "data.start_ramp_epoch"),
    (dict(end_ramp_epoch=3), "data.end_ramp_epoch"),
]


@pytest.mark.parametrize("kw, field", BAD, ids=[f for _, f in BAD])
def test_bad_values_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        D.describe(DataConfig(name="ffcv_imagenet", **kw))


@pytest.mark.parametrize("cfg", [DataConfig(name="cifar10"), DataConfig(name="synthetic", image_size=32),
                                 DataConfig(name="digits"), DataConfig(name="ffcv_cifar")])
def test_only_imagenet_shaped_data(cfg):
    from dataclasses import replace

    with pytest.raises(ValueError, match=r"data\.min_res: progressive resizing needs ImageNet-shaped data"):
        D.describe(replace(cfg, min_res=32, max_res=64))


def test_spec_takes_the_ramp_and_names_bad_fields():
    spec = load_spec(str(CONFIGS / "imagenet_resnet18_ffcv.yaml"))
    data = spec.data_config()
    assert (data.min_res, data.max_res, data.start_ramp_epoch, data.end_ramp_epoch) == (160, 192, 11, 13)
    assert [train_resolution(data, e) for e in (0, 12, 13, 15)] == [160, 192, 192, 192]  # 176 rounds to 192
    cases = [
        (["data.max_res=128"], "data.min_res", "larger than"),
        (["data.end_ramp_epoch=5"], "data.end_ramp_epoch", "before"),
        (["data.min_res=-8"], "data.min_res", "greater than"),
        (["data.name=cifar10"], "data.min_res", "ImageNet-shaped"),
    ]
    for overrides, field, words in cases:
        with pytest.raises(SpecError) as info:
            load_spec(str(CONFIGS / "imagenet_resnet18_ffcv.yaml"), overrides)
        assert info.value.field == field and words in info.value.reason, str(info.value)
