"""What each data set is, from its config alone, without importing torch or reading a file: the
per-example shape, the number of classes and the nominal split sizes (`DESCRIPTIONS`), the
constants behind them, where a data set's files sit under data.root, and cheap checks that
they are there (`CHECKS`).

This module holds data and pure functions only and imports no other module of this package
but resolution.py. The file readers (cifar_files, idx_files, imagenet, ffcv_io) import it for their
layouts; ondisk.py imports both and is where the true counts come from the files
(`ondisk.describe`, `ondisk.check_available`: what the spec, the planner and `lth run`'s
pre-flight call). Imports go one way: catalog <- readers <- ondisk <- sources.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from trainers.data.resolution import check_resolution
from trainers.jobs import DataConfig


@dataclass(frozen=True)
class DataInfo:
    input_shape: tuple[int, ...]  # one example, without the batch dimension (C, H, W) or (F,)
    num_classes: int
    num_train: int
    num_test: int


# ---- digits (scikit-learn) ------------------------------------------------------------------

DIGITS_EXAMPLES = 1797
DIGITS_TEST = 360
DIGITS_TRAIN = DIGITS_EXAMPLES - DIGITS_TEST


def digits_info(cfg: DataConfig) -> DataInfo:
    return DataInfo((64,), 10, DIGITS_TRAIN, DIGITS_TEST)


# ---- synthetic images -----------------------------------------------------------------------

SYNTHETIC_IMAGE_SIZE = 32
SYNTHETIC_NUM_CLASSES = 10
SYNTHETIC_NUM_TRAIN = 5000
SYNTHETIC_NUM_TEST = 1000


def synthetic_info(cfg: DataConfig) -> DataInfo:
    side = cfg.image_size or SYNTHETIC_IMAGE_SIZE
    info = DataInfo(
        (cfg.channels, side, side),
        cfg.num_classes or SYNTHETIC_NUM_CLASSES,
        cfg.num_train or SYNTHETIC_NUM_TRAIN,
        cfg.num_test or SYNTHETIC_NUM_TEST,
    )
    for name, value, least in (("image_size", side, 8), ("channels", cfg.channels, 1), ("num_classes", info.num_classes, 2),
                               ("num_train", info.num_train, 1), ("num_test", info.num_test, 1)):
        if value < least:
            raise ValueError(f"data.{name} must be >= {least} for synthetic data, got {value}")
    return info


# ---- CIFAR (torchvision's python batches) ---------------------------------------------------

CIFAR_SHAPE = (3, 32, 32)
CIFAR_NUM_TRAIN = 50_000
CIFAR_NUM_TEST = 10_000


@dataclass(frozen=True)
class CifarLayout:
    num_classes: int
    folder: str  # the batches folder inside the usual parent directory
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    meta_file: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR10 = CifarLayout(
    10, "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels",
    "batches.meta", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
)
CIFAR100 = CifarLayout(
    100, "cifar-100-python", ("train",), ("test",), "fine_labels",
    "meta", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
)
CIFAR_LAYOUTS = {"cifar10": CIFAR10, "cifar100": CIFAR100}


def cifar_where_to_get(layout: CifarLayout, base: Path | str) -> str:
    """Where a missing CIFAR data set comes from and where its files go (a message's second half)."""
    n = layout.num_classes
    files = ", ".join(layout.train_files + layout.test_files + (layout.meta_file,))
    return (f"get CIFAR-{n}'s python version (cifar-{n}-python.tar.gz, https://www.cs.toronto.edu/~kriz/cifar.html, "
            f"or torchvision.datasets.CIFAR{n}(ROOT, download=True)) and unpack it in {base}, so that "
            f"{Path(base) / layout.folder}/ holds {files}")


def cifar_batches_dir(root: str | None, layout: CifarLayout, field: str = "data.root") -> Path:
    """The folder holding the batch files: root itself or root/<folder>."""
    if not root:
        raise ValueError(f"{field} must be set to the directory holding {layout.folder}/")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"{field}: directory {base} does not exist; {cifar_where_to_get(layout, base)}")
    for candidate in (base, base / layout.folder):
        if all((candidate / f).is_file() for f in layout.train_files + layout.test_files):
            return candidate
    missing = [f for f in layout.train_files + layout.test_files if not (base / layout.folder / f).is_file()]
    raise FileNotFoundError(
        f"{field}: no CIFAR-{layout.num_classes} batch files in {base} or {base / layout.folder} "
        f"(missing {', '.join(missing)}; expected torchvision's python format); {cifar_where_to_get(layout, base)}"
    )


def _cifar(cfg: DataConfig) -> DataInfo:
    layout = CIFAR_LAYOUTS[cfg.name]
    return DataInfo(CIFAR_SHAPE, layout.num_classes, cfg.num_train or CIFAR_NUM_TRAIN, cfg.num_test or CIFAR_NUM_TEST)


# ---- ImageNet-shaped image folders ----------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_IMAGE_SIZE = 224
IMAGENET_NUM_CLASSES = 1000
IMAGENET_NUM_TRAIN = 1_281_167
IMAGENET_NUM_TEST = 50_000


def image_sizes(cfg: DataConfig) -> tuple[int, int]:
    """(training crop side, eval resize side)."""
    size = cfg.image_size or IMAGENET_IMAGE_SIZE
    eval_size = cfg.eval_image_size or round(size * 8 / 7)
    if size < 8:
        raise ValueError(f"data.image_size must be >= 8, got {size}")
    if eval_size < size:
        raise ValueError(f"data.eval_image_size ({eval_size}) must be >= data.image_size ({size})")
    return size, eval_size


def imagenet_where_to_get(base: Path | str) -> str:
    return (f"get the ILSVRC-2012 training and validation images (https://image-net.org, after signing up) and lay "
            f"them out as {Path(base) / 'train'}/<class>/*.JPEG and {Path(base) / 'val'}/<class>/*.JPEG (the "
            f"validation images sorted into the same class folders as the training ones)")


def split_dirs(root: str | None) -> tuple[Path, Path]:
    if not root:
        raise ValueError("data.root must be set to the image folder (holding train/ and val/)")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"data.root: directory {base} does not exist; {imagenet_where_to_get(base)}")
    dirs = base / "train", base / "val"
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"data.root: {d} does not exist (expected {base}/train/<class>/ and {base}/val/<class>/); "
                                    f"{imagenet_where_to_get(base)}")
    return dirs


# Image files the folder loader reads (imagenet.scan hands these to torchvision's make_dataset).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _check_imagenet(cfg: DataConfig) -> None:
    image_sizes(cfg)
    for folder in split_dirs(cfg.root):
        # Cheap: the first class folder holding an image is enough (a full scan takes a while on ImageNet).
        classes = sorted((d for d in os.scandir(folder) if d.is_dir()), key=lambda d: d.name)
        if not classes:
            raise FileNotFoundError(f"{folder}: empty image folder (no class sub-directories)")
        has_image = any(
            f.name.lower().endswith(IMAGE_EXTENSIONS) for d in classes[:10] for f in itertools.islice(os.scandir(d.path), 100)
        )
        if not has_image:
            raise FileNotFoundError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its first class folders")


def _imagenet(cfg: DataConfig) -> DataInfo:
    size, _ = image_sizes(cfg)
    return DataInfo((3, size, size), cfg.num_classes or IMAGENET_NUM_CLASSES, cfg.num_train or IMAGENET_NUM_TRAIN,
                    cfg.num_test or IMAGENET_NUM_TEST)


# ---- FFCV betons ----------------------------------------------------------------------------

BETON_SPLITS = ("train", "test")
BETON_INFO_FILE = "info.json"  # written beside the betons by lth-beton: the DataInfo, readable without ffcv


# The one install route of ffcv (README "Two commands on a fresh machine"): `make install` builds it
# where its native libraries are, so a message about a missing ffcv points there, not at pip.
FFCV_INSTALL = ("`make install` adds it where pkg-config finds opencv4 and libturbojpeg: on Debian/Ubuntu "
                "`apt-get install pkg-config libopencv-dev libturbojpeg0-dev`, then `make install` again; README, "
                "\"Two commands on a fresh machine\"")


def beton_where_to_get(base: Path | str) -> str:
    return (f"write {Path(base) / 'train.beton'}, {Path(base) / 'test.beton'} and {BETON_INFO_FILE} with "
            f"`lth-beton --data imagenet --root IMAGE_FOLDER --out {base}` (or --data cifar10 --root CIFAR_DIR), "
            f"from a data set in its own layout; lth-beton needs ffcv ({FFCV_INSTALL})")


def beton_paths(root: str | None, field: str = "data.root") -> dict[str, Path]:
    if not root:
        raise ValueError(f"{field} must be set to the directory holding train.beton and test.beton")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"{field}: directory {base} does not exist; {beton_where_to_get(base)}")
    paths = {s: base / f"{s}.beton" for s in BETON_SPLITS}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{field}: missing {', '.join(missing)}; {beton_where_to_get(base)}")
    return paths


def _check_ffcv(cfg: DataConfig) -> None:
    if cfg.name == "ffcv_imagenet":
        image_sizes(cfg)
    beton_paths(cfg.root)  # (ondisk.check_available then asks whether this machine can read them)


def _ffcv_cifar(cfg: DataConfig) -> DataInfo:
    return DataInfo(CIFAR_SHAPE, cfg.num_classes or 10, cfg.num_train or CIFAR_NUM_TRAIN, cfg.num_test or CIFAR_NUM_TEST)


def _ffcv_imagenet(cfg: DataConfig) -> DataInfo:
    size, _ = image_sizes(cfg)
    return DataInfo((3, size, size), cfg.num_classes or IMAGENET_NUM_CLASSES, cfg.num_train or IMAGENET_NUM_TRAIN,
                    cfg.num_test or IMAGENET_NUM_TEST)


# ---- IDX files: MNIST and its family -------------------------------------------------------


@dataclass(frozen=True)
class IdxLayout:
    num_classes: int
    num_train: int  # the official split sizes (the files' headers give the true ones)
    num_test: int
    files: tuple[str, str, str, str]  # train images, train labels, test images, test labels (each also found as .gz)
    default_root: str | None  # where a system package puts them (data.root unset)
    where: str  # where a user gets the files
    transpose: bool = False  # EMNIST stores images transposed


IDX_SHAPE = (1, 28, 28)
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX_LAYOUTS = {
    # Debian/Ubuntu's dataset-fashion-mnist package installs the four .gz files here.
    "fashion_mnist": IdxLayout(10, 60_000, 10_000, _MNIST_FILES, "/usr/share/datasets/fashion-mnist",
                               "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or the four files from "
                               "https://github.com/zalandoresearch/fashion-mnist"),
    "mnist": IdxLayout(10, 60_000, 10_000, _MNIST_FILES, None, "the four files from http://yann.lecun.com/exdb/mnist/"),
    "kmnist": IdxLayout(10, 60_000, 10_000, _MNIST_FILES, None, "the four MNIST-format files from https://github.com/rois-codh/kmnist"),
    "emnist_digits": IdxLayout(10, 240_000, 40_000,
                               ("emnist-digits-train-images-idx3-ubyte", "emnist-digits-train-labels-idx1-ubyte",
                                "emnist-digits-test-images-idx3-ubyte", "emnist-digits-test-labels-idx1-ubyte"),
                               None, "the 'gzip' archive of https://www.nist.gov/itl/products-and-services/emnist-dataset "
                               "(its emnist-digits-* files)", transpose=True),
}


def idx_files(cfg: DataConfig) -> tuple[Path, Path, Path, Path]:
    """The four files of an IDX data set: under data.root, else its default folder; each name
    found as it is or with .gz. Errors say where to get them and what goes where."""
    layout = IDX_LAYOUTS[cfg.name]
    root = cfg.root or layout.default_root
    names = ", ".join(f"{n}[.gz]" for n in layout.files)
    hint = f"put {names} in one folder and set data.root to it; get them from {layout.where}"
    if not root:
        raise ValueError(f"data.root must be set to the directory holding {cfg.name}'s IDX files: {hint}")
    field = "data.root" if cfg.root else f"{cfg.name}'s default folder (data.root unset)"
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"{field}: directory {base} does not exist; {hint}")
    found, missing = [], []
    for name in layout.files:
        hit = next((p for p in (base / name, base / f"{name}.gz") if p.is_file()), None)
        (found if hit else missing).append(hit or name)
    if missing:
        raise FileNotFoundError(f"{field}: {base} lacks {', '.join(f'{m}[.gz]' for m in missing)}; {hint}")
    return tuple(found)  # type: ignore[return-value]


def idx_root_found(cfg: DataConfig) -> bool:
    root = cfg.root or IDX_LAYOUTS[cfg.name].default_root
    return bool(root) and Path(root).expanduser().is_dir()


def _idx(cfg: DataConfig) -> DataInfo:
    layout = IDX_LAYOUTS[cfg.name]
    return DataInfo(IDX_SHAPE, layout.num_classes, cfg.num_train or layout.num_train, cfg.num_test or layout.num_test)


# ---- the catalog ----------------------------------------------------------------------------


def subset_size(n_available: int, n_wanted: int | None, split: str) -> int:
    """How many examples data.num_train / num_test keep of the n_available (order.data_subset draws them)."""
    if n_wanted is None:
        return n_available
    if n_wanted < 1 or n_wanted > n_available:
        raise ValueError(f"num_{split}={n_wanted} must be between 1 and the {n_available} examples available")
    return n_wanted


def root_is_dir(cfg: DataConfig) -> bool:
    return bool(cfg.root) and Path(cfg.root).expanduser().is_dir()


# name -> DataInfo of a configured data set from its config alone (the defaults where it states
# no counts; ondisk.describe replaces them with the files' counts where data.root holds them).
# sources.DATASETS registers a loader under every name here (a test checks the two agree).
DESCRIPTIONS: dict[str, Callable[[DataConfig], DataInfo]] = {
    "digits": digits_info,
    "synthetic": synthetic_info,
    "cifar10": _cifar,
    "cifar100": _cifar,
    "imagenet": _imagenet,
    "ffcv_cifar": _ffcv_cifar,
    "ffcv_imagenet": _ffcv_imagenet,
    **{name: _idx for name in IDX_LAYOUTS},
}


# name -> a cheap check that the data's files are there (FileNotFoundError/ValueError naming the
# path), without reading them.
CHECKS: dict[str, Callable[[DataConfig], object]] = {
    "digits": lambda cfg: None,  # part of scikit-learn: always there
    "synthetic": synthetic_info,
    "cifar10": lambda cfg: cifar_batches_dir(cfg.root, CIFAR_LAYOUTS[cfg.name]),
    "cifar100": lambda cfg: cifar_batches_dir(cfg.root, CIFAR_LAYOUTS[cfg.name]),
    "imagenet": _check_imagenet,
    "ffcv_cifar": _check_ffcv,
    "ffcv_imagenet": _check_ffcv,
    **{name: idx_files for name in IDX_LAYOUTS},
}


def valid_names() -> str:
    return ", ".join(sorted(DESCRIPTIONS))


def check_config(cfg: DataConfig) -> None:
    if not isinstance(cfg, DataConfig):
        raise TypeError(f"expected a DataConfig, got {type(cfg).__name__}")
    if cfg.name not in DESCRIPTIONS:
        raise ValueError(f"data.name: unknown data set {cfg.name!r}; valid names: {valid_names()}")
    check_resolution(cfg)
