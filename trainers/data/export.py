"""Writers of test and benchmark data in the on-disk formats the readers take, from synthetic
images: a CIFAR directory (torchvision's python pickles) and an ImageNet-style image folder."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainers.data import order
from trainers.data.bundle import DataInfo
from trainers.data.catalog import CIFAR10, CIFAR100
from trainers.data.synthetic import generate


def write_cifar_dir(root: str | Path, num_classes: int = 10, num_train: int = 500, num_test: int = 100, seed: int = 0) -> Path:
    """Write root/cifar-10-batches-py (or cifar-100-python) with synthetic 32x32 images; returns that folder.

    Keys are str, as the official (Python 2) pickles read with encoding="latin1" have them, so
    torchvision's reader (which does exactly that) reads these files too, md5 check aside.
    """
    layout = {10: CIFAR10, 100: CIFAR100}.get(num_classes)
    if layout is None:
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes}")
    images, labels = generate(DataInfo((3, 32, 32), num_classes, num_train, num_test), seed)
    data = images.reshape(len(images), -1).numpy()
    labels = labels.tolist()
    folder = Path(root) / layout.folder
    folder.mkdir(parents=True, exist_ok=True)

    def entry(lo: int, hi: int, batch_label: str) -> dict:
        d = {"batch_label": batch_label, "data": data[lo:hi], "filenames": [f"synthetic_{i:06d}.png" for i in range(lo, hi)]}
        if num_classes == 10:
            d["labels"] = labels[lo:hi]
        else:
            d["fine_labels"] = labels[lo:hi]
            d["coarse_labels"] = [y // 5 for y in labels[lo:hi]]
        return d

    bounds = np.linspace(0, num_train, len(layout.train_files) + 1).round().astype(int)
    for name, lo, hi in zip(layout.train_files, bounds[:-1], bounds[1:]):
        _dump(folder / name, entry(int(lo), int(hi), f"training batch {name}"))
    _dump(folder / layout.test_files[0], entry(num_train, num_train + num_test, "testing batch 1 of 1"))
    names = [f"class_{k}" for k in range(num_classes)]
    if num_classes == 10:
        meta = {"label_names": names, "num_cases_per_batch": int(bounds[1]), "num_vis": 3072}
    else:
        meta = {"fine_label_names": names, "coarse_label_names": [f"superclass_{k}" for k in range(20)]}
    _dump(folder / layout.meta_file, meta)
    return folder


def _dump(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_image_folder(
    root: str | Path,
    num_classes: int = 4,
    per_class_train: int = 8,
    per_class_val: int = 2,
    image_size: int = 48,
    seed: int = 0,
    *,
    image_format: str = "png",
    vary_size: bool = True,
) -> Path:
    """Write root/train/<class>/*.png and root/val/<class>/* (ImageFolder layout); returns root.

    vary_size: stretch each image to a random width and height in [image_size, 1.5 * image_size],
    as real photographs differ in size and aspect ratio.
    """
    fmt = {"png": ("PNG", ".png"), "jpeg": ("JPEG", ".jpg"), "jpg": ("JPEG", ".jpg")}.get(image_format.lower())
    if fmt is None:
        raise ValueError(f"image_format must be png or jpeg, got {image_format!r}")
    n_train, n_val = num_classes * per_class_train, num_classes * per_class_val
    images, _ = generate(DataInfo((3, image_size, image_size), num_classes, n_train, n_val), seed)
    labels = [i % num_classes for i in range(n_train + n_val)]  # balanced: per_class_* of each class
    sizes = torch.randint(image_size, image_size * 3 // 2 + 1, (len(labels), 2), generator=order.generator(order.STREAM_SYNTHETIC, seed, -1))
    root = Path(root)
    for i, label in enumerate(labels):
        split = "train" if i < n_train else "val"
        folder = root / split / f"class_{label:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(images[i].permute(1, 2, 0).numpy())
        if vary_size:
            img = img.resize((int(sizes[i, 0]), int(sizes[i, 1])), Image.BILINEAR)
        img.save(folder / f"img_{i:06d}{fmt[1]}", format=fmt[0])
    return root
