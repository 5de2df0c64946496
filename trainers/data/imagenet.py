"""ImageNet-style image folders (root/train/<class>/*, root/val/<class>/*), streamed from files.

Training: random-resized crop (area 0.08-1, aspect 3/4-4/3) to image_size and a horizontal flip;
evaluation: resize the shorter side to eval_image_size (default round(image_size * 8/7)) and
centre-crop image_size. Files are decoded by DataLoader workers; a batch sampler hands each
worker (example index, per-position seed), and the worker draws the crop and flip from a
torch.Generator seeded with it, so the batches are a pure function of (data_seed, epoch,
position) whatever the number of workers. Workers return uint8; the device normalises.
With progressive resizing (data.min_res/max_res) the keys also carry the epoch's crop side.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Iterator

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from trainers.data import order
from trainers.data.bundle import Batch, DataBundle, DataInfo, DataSource, check_eval_args, check_stream_args
from trainers.data.resident import ResizedCropFlip
from trainers.data.resolution import train_resolution
from trainers.jobs import DataConfig

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224
NUM_CLASSES = 1000
NUM_TRAIN = 1_281_167
NUM_TEST = 50_000
_CROP = ResizedCropFlip()


def image_sizes(cfg: DataConfig) -> tuple[int, int]:
    """(training crop side, eval resize side)."""
    size = cfg.image_size or DEFAULT_IMAGE_SIZE
    eval_size = cfg.eval_image_size or round(size * 8 / 7)
    if size < 8:
        raise ValueError(f"data.image_size must be >= 8, got {size}")
    if eval_size < size:
        raise ValueError(f"data.eval_image_size ({eval_size}) must be >= data.image_size ({size})")
    return size, eval_size


def default_workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) - 1))


def split_dirs(root: str | None) -> tuple[Path, Path]:
    if not root:
        raise ValueError("data.root must be set to the image folder (holding train/ and val/)")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"data.root: directory {base} does not exist")
    dirs = base / "train", base / "val"
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"data.root: {d} does not exist (expected {base}/train/<class>/ and {base}/val/<class>/)")
    return dirs


def scan(folder: Path, class_to_idx: dict[str, int] | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(path, label)]) of one split, as torchvision's ImageFolder finds them."""
    try:
        classes, found = find_classes(str(folder))
        mapping = class_to_idx or found
        unknown = sorted(set(classes) - set(mapping))
        if unknown:
            raise ValueError(f"{folder}: classes not in the training split: {unknown[:5]}")
        samples = make_dataset(str(folder), mapping, extensions=IMG_EXTENSIONS, allow_empty=class_to_idx is not None)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{folder}: empty or invalid image folder ({e})") from e
    if not samples:
        raise FileNotFoundError(f"{folder}: no images found")
    return sorted(mapping, key=mapping.get), samples


class FolderImages(Dataset):
    """Decodes one image; the key is (index, seed, side): seed None means the evaluation transform,
    side None the configured image_size (else the training side of progressive resizing)."""

    def __init__(self, samples: list[tuple[str, int]], size: int, eval_size: int):
        self.samples = samples
        self.size = size
        self.eval_size = eval_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int | None, int | None]) -> tuple[Tensor, int]:
        index, seed, side = key
        size = self.size if side is None else side
        path, label = self.samples[index]
        with Image.open(path) as im:
            img = im.convert("RGB")
        if seed is None:
            # The evaluation view (the same fraction of the image at any side).
            resize = self.eval_size if side is None else round(side * self.eval_size / self.size)
            img = TF.center_crop(TF.resize(img, resize), [size, size])
        else:
            p = _CROP.draw(torch.Generator().manual_seed(seed), 1, img.height, img.width)
            img = TF.resized_crop(img, int(p["i"]), int(p["j"]), int(p["h"]), int(p["w"]), [size, size], antialias=True)
            if bool(p["flip"]):
                img = TF.hflip(img)
        return TF.pil_to_tensor(img), label


class _TrainKeys:
    """Batch sampler of the training stream: batches of (index, per-position seed), forever."""

    def __init__(self, n: int, data_seed: int, batch_size: int, start_iter: int, ipe: int, augment: bool, cfg: DataConfig):
        self.n, self.seed, self.b, self.start, self.ipe, self.augment = n, data_seed, batch_size, start_iter, ipe, augment
        self.cfg = cfg

    def __iter__(self) -> Iterator[list[tuple[int, int | None, int | None]]]:
        epoch, step = divmod(self.start, self.ipe)
        while True:
            perm = order.epoch_permutation(self.seed, epoch, self.n).tolist()
            side = train_resolution(self.cfg, epoch)
            for s in range(step, self.ipe):
                positions = range(s * self.b, (s + 1) * self.b)
                yield [(perm[p], order.sample_seed(self.seed, epoch, p) if self.augment else None, side) for p in positions]
            epoch, step = epoch + 1, 0


class FolderBundle(DataBundle):
    def __init__(self, info: DataInfo, train: list, test: list, size: int, eval_size: int, augment: bool,
                 device: torch.device, num_workers: int, cfg: DataConfig):
        self.info = info
        self.cfg = cfg
        self.train = FolderImages(train, size, eval_size)
        self.test = FolderImages(test, size, eval_size)
        self.augment = augment
        self.device = torch.device(device)
        self.num_workers = num_workers
        self._mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1) * 255.0
        self._inv_std = 1.0 / (torch.tensor(STD, device=self.device).view(1, 3, 1, 1) * 255.0)

    def _loader(self, dataset: FolderImages, batches) -> Iterator[Batch]:
        cuda = self.device.type == "cuda"
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=self.num_workers, pin_memory=cuda,
                            prefetch_factor=4 if self.num_workers else None)
        for x, y in loader:
            x = x.to(self.device, non_blocking=cuda)
            y = y.to(self.device, non_blocking=cuda)
            yield (x.float() - self._mean) * self._inv_std, y

    def train_stream(self, data_seed: int, batch_size: int, start_iter: int) -> Iterator[Batch]:
        check_stream_args(start_iter)
        ipe = self.iterations_per_epoch(batch_size)
        # Without augmentation (seed None) training images get the evaluation transform.
        keys = _TrainKeys(len(self.train), data_seed, batch_size, start_iter, ipe, self.augment, self.cfg)
        return self._loader(self.train, keys)

    def eval_batches(self, split: str, batch_size: int, max_examples: int | None = None) -> Iterator[Batch]:
        if split == "test":
            count = check_eval_args(split, batch_size, max_examples, self.info.num_test, "test")
            dataset, idx = self.test, list(range(count))
        else:
            check_eval_args(split, batch_size, max_examples, self.info.num_train, "train")
            dataset, idx = self.train, order.eval_train_subset(self.info.num_train, max_examples).tolist()
        keys = [[(i, None, None) for i in idx[lo : lo + batch_size]] for lo in range(0, len(idx), batch_size)]
        return self._loader(dataset, keys)


class ImageFolderSource(DataSource):
    def scan_splits(self) -> tuple[DataInfo, list, list]:
        train_dir, val_dir = split_dirs(self.cfg.root)
        classes, train = scan(train_dir)
        _, test = scan(val_dir, {c: i for i, c in enumerate(classes)})
        if self.cfg.num_classes is not None and self.cfg.num_classes != len(classes):
            raise ValueError(f"data.num_classes={self.cfg.num_classes} but {train_dir} has {len(classes)} class folders")
        for name, wanted in (("train", self.cfg.num_train), ("test", self.cfg.num_test)):
            samples = train if name == "train" else test
            idx = order.data_subset(len(samples), wanted, self.cfg.seed, name)
            if idx is not None:
                samples[:] = [samples[i] for i in idx.tolist()]
        size, _ = image_sizes(self.cfg)
        return DataInfo((3, size, size), len(classes), len(train), len(test)), train, test

    def describe(self) -> DataInfo:
        size, _ = image_sizes(self.cfg)
        if self.cfg.root and Path(self.cfg.root).expanduser().is_dir():
            return self.scan_splits()[0]
        return DataInfo((3, size, size), self.cfg.num_classes or NUM_CLASSES, self.cfg.num_train or NUM_TRAIN, self.cfg.num_test or NUM_TEST)

    def check(self) -> None:
        image_sizes(self.cfg)
        for folder in split_dirs(self.cfg.root):
            # Cheap: the first class folder holding an image is enough (a full scan takes a while on ImageNet).
            classes = sorted((d for d in os.scandir(folder) if d.is_dir()), key=lambda d: d.name)
            if not classes:
                raise FileNotFoundError(f"{folder}: empty image folder (no class sub-directories)")
            has_image = any(
                f.name.lower().endswith(IMG_EXTENSIONS) for d in classes[:10] for f in itertools.islice(os.scandir(d.path), 100)
            )
            if not has_image:
                raise FileNotFoundError(f"{folder}: no images ({', '.join(IMG_EXTENSIONS)}) in its first class folders")

    def open(self, device: torch.device, *, num_workers: int | None = None) -> DataBundle:
        info, train, test = self.scan_splits()
        size, eval_size = image_sizes(self.cfg)
        workers = default_workers() if num_workers is None else num_workers
        return FolderBundle(info, train, test, size, eval_size, self.cfg.augment, device, workers, self.cfg)
