"""Progressive resizing (low-resolution training, as in ffcv-imagenet): the side of the training
crops as a pure function of (data config, epoch).

The side grows linearly from `min_res` (at `start_ramp_epoch` and before) to `max_res` (at
`end_ramp_epoch` and after), rounded to the nearest multiple of RESOLUTION_STEP inside the ramp and
kept within [min_res, max_res]. A function of the epoch only: a resumed run sees the same side
at the same iteration. Evaluation never changes size (image_size / eval_image_size).
"""
from __future__ import annotations

from fractions import Fraction

from trainers.jobs import DataConfig

RESOLUTION_STEP = 32  # sizes inside the ramp: few distinct shapes (cuDNN autotuning, torch.compile)
IMAGENET_SHAPED = ("imagenet", "ffcv_imagenet")  # plus synthetic images of side >= SYNTHETIC_MIN_SIDE
SYNTHETIC_MIN_SIDE = 64  # where synthetic data switches to random-resized crops (resident.standard_augmentation)
MIN_RES = 8


def progressive(cfg: DataConfig) -> bool:
    return cfg.min_res is not None


def _imagenet_shaped(cfg: DataConfig) -> bool:
    if cfg.name in IMAGENET_SHAPED:
        return True
    return cfg.name == "synthetic" and (cfg.image_size or 32) >= SYNTHETIC_MIN_SIDE


def check_resolution(cfg: DataConfig) -> None:
    """ValueError naming the field when the progressive-resizing fields are inconsistent."""
    if cfg.min_res is None and cfg.max_res is None:
        for name in ("start_ramp_epoch", "end_ramp_epoch"):
            if getattr(cfg, name) != 0:
                raise ValueError(f"data.{name}: set only with data.min_res and data.max_res (progressive resizing)")
        return
    for name, other in (("min_res", "max_res"), ("max_res", "min_res")):
        if getattr(cfg, name) is None:
            raise ValueError(f"data.{name}: progressive resizing needs both data.min_res and data.max_res (data.{other} is set)")
        if getattr(cfg, name) < MIN_RES:
            raise ValueError(f"data.{name}: must be >= {MIN_RES}, got {getattr(cfg, name)}")
    if cfg.min_res > cfg.max_res:
        raise ValueError(f"data.min_res: {cfg.min_res} is larger than data.max_res ({cfg.max_res})")
    if cfg.start_ramp_epoch < 0:
        raise ValueError(f"data.start_ramp_epoch: must be >= 0, got {cfg.start_ramp_epoch}")
    if cfg.end_ramp_epoch < cfg.start_ramp_epoch:
        raise ValueError(f"data.end_ramp_epoch: {cfg.end_ramp_epoch} is before data.start_ramp_epoch ({cfg.start_ramp_epoch})")
    if not _imagenet_shaped(cfg):
        raise ValueError(
            f"data.min_res: progressive resizing needs ImageNet-shaped data ({', '.join(IMAGENET_SHAPED)}, or synthetic "
            f"with image_size >= {SYNTHETIC_MIN_SIDE}), not {cfg.name!r} with image_size={cfg.image_size}"
        )


def train_resolution(cfg: DataConfig, epoch: int) -> int | None:
    """The training crop side in `epoch` (0-based), or None: the data set's fixed size."""
    if cfg.min_res is None or cfg.max_res is None:
        return None
    lo, hi, a, b = cfg.min_res, cfg.max_res, cfg.start_ramp_epoch, cfg.end_ramp_epoch
    if epoch >= b:  # first: with start == end the ramp is a step at that epoch
        return hi
    if epoch <= a:
        return lo
    # Exact rational arithmetic (no float rounding can make two machines disagree on a side),
    # rounded to the NEAREST multiple of the step, ties to even, as ffcv-imagenet's
    # np.round(np.interp(...) / 32) * 32 does.
    side = Fraction(lo) + Fraction((hi - lo) * (epoch - a), b - a)
    return min(hi, max(lo, round(side / RESOLUTION_STEP) * RESOLUTION_STEP))
