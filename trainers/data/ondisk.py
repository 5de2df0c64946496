"""A configured data set as its files under data.root show it: the true shape and counts
(`describe`) and whether this machine can read it (`check_available`), for the spec, the
planner and `lth run`'s pre-flight.

Where data.root is not a directory (the planner's machine may lack the data) the description
is the catalog's, from the config alone. Where it is, the counts come from the files, through
the readers: the CIFAR batch files (cifar_files.py: numpy only, so planning a CIFAR folder
imports no torch), an image folder's scan (imagenet.py) and a beton's header without info.json
(ffcv_io.py); those two need torch and are imported only when such files are there.

This module imports the catalog and the readers; none of them imports it (catalog <- readers
<- ondisk <- sources).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

from trainers.data.catalog import (
    BETON_INFO_FILE, CHECKS, CIFAR_LAYOUTS, CIFAR_SHAPE, DESCRIPTIONS, IDX_LAYOUTS, DataInfo, beton_paths, check_config,
    cifar_batches_dir, idx_files, idx_root_found, root_is_dir, subset_size,
)
from trainers.data.cifar_files import read_batches
from trainers.data.idx_files import read_shape
from trainers.jobs import DataConfig


def _cifar(cfg: DataConfig, nominal: DataInfo) -> DataInfo:
    layout = CIFAR_LAYOUTS[cfg.name]
    folder = cifar_batches_dir(cfg.root, layout)
    # The actual counts: exported benchmark sets are smaller than the real ones.
    n = {split: len(read_batches(folder, files, layout)[1])
         for split, files in (("train", layout.train_files), ("test", layout.test_files))}
    return DataInfo(CIFAR_SHAPE, layout.num_classes, subset_size(n["train"], cfg.num_train, "train"),
                    subset_size(n["test"], cfg.num_test, "test"))


def _idx(cfg: DataConfig, nominal: DataInfo) -> DataInfo:
    train_images, _, test_images, _ = idx_files(cfg)
    shapes = {split: read_shape(path) for split, path in (("train", train_images), ("test", test_images))}
    for path, shape in zip((train_images, test_images), shapes.values()):
        if len(shape) != 3:
            raise ValueError(f"{path}: expected images of shape (N, H, W), the header says {shape}")
    side = shapes["train"][1:]
    return DataInfo((1, *side), nominal.num_classes, subset_size(shapes["train"][0], cfg.num_train, "train"),
                    subset_size(shapes["test"][0], cfg.num_test, "test"))


def _imagenet(cfg: DataConfig, nominal: DataInfo) -> DataInfo:
    from trainers.data.imagenet import scanned_info  # torchvision's folder scan

    return scanned_info(cfg)


def beton_info(paths: dict[str, Path], image_shape: tuple[int, ...] | None, num_classes: int | None) -> DataInfo:
    """DataInfo from info.json, else from the betons' headers (sample counts, labels, sizes)."""
    meta_path = paths["train"].parent / BETON_INFO_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())["info"]
        shape = image_shape or tuple(meta["input_shape"])
        return DataInfo(shape, num_classes or meta["num_classes"], meta["num_train"], meta["num_test"])
    from trainers.data.ffcv_io import header_info  # needs ffcv

    return header_info(paths, image_shape, num_classes)


def _ffcv(cfg: DataConfig, nominal: DataInfo) -> DataInfo:
    # ffcv_cifar takes its image shape from the files; ffcv_imagenet's is the configured crop.
    image_shape = nominal.input_shape if cfg.name == "ffcv_imagenet" else None
    try:
        info = beton_info(beton_paths(cfg.root), image_shape, cfg.num_classes)
    except (FileNotFoundError, ImportError):
        return nominal
    return replace(info, num_train=cfg.num_train or info.num_train, num_test=cfg.num_test or info.num_test)


# name -> the DataInfo read from the files, given the catalog's (called where data.root is a directory).
FROM_FILES: dict[str, Callable[[DataConfig, DataInfo], DataInfo]] = {
    "cifar10": _cifar,
    "cifar100": _cifar,
    "imagenet": _imagenet,
    "ffcv_cifar": _ffcv,
    "ffcv_imagenet": _ffcv,
    **{name: _idx for name in IDX_LAYOUTS},
}


def describe(cfg: DataConfig) -> DataInfo:
    """Shape and counts without loading: the files' counts where data.root holds them, else the catalog's."""
    check_config(cfg)
    nominal = DESCRIPTIONS[cfg.name](cfg)
    # IDX data sets have a default folder (a system package's) that counts as data.root.
    if cfg.name in FROM_FILES and (idx_root_found(cfg) if cfg.name in IDX_LAYOUTS else root_is_dir(cfg)):
        return FROM_FILES[cfg.name](cfg, nominal)
    return nominal


def check_available(cfg: DataConfig) -> None:
    """The data is present and readable, cheaply (for `lth run`; `lth plan` does not need it)."""
    check_config(cfg)
    CHECKS[cfg.name](cfg)
    if cfg.name.startswith("ffcv_"):
        from trainers.data.ffcv_io import import_ffcv  # the betons are there: can this machine read them?

        import_ffcv()
