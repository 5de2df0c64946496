"""ImageNet-style image folders (root/train/<class>/*, root/val/<class>/*), streamed from files.

The CPU only reads bytes: a pool of reader threads (as many as the job's CPUs allow, workers.py)
reads each batch's files ahead of time; one producer thread decodes them on the training device
(nvJPEG on CUDA, libjpeg-turbo on the CPU: jpeg.py, with CPU fallbacks for the files nvJPEG
cannot take) while a second one crops, resizes, flips and normalises the previous batch there,
the whole batch's crops in one roi_align call (`resized_crops`; prefetch.py runs the stages).

Training: random-resized crop (area 0.08-1, aspect 3/4-4/3) to image_size and a horizontal flip;
evaluation: resize the shorter side to eval_image_size (default round(image_size * 8/7)) and
centre-crop image_size (one image at a time: evaluation is not on the training path). The crop
and flip of the example at position p of epoch e come from a CPU generator seeded with
order.sample_seed(data_seed, e, p) and the decoded image's size
(ResizedCropFlip.uniforms/boxes), so the batches are a pure function of (data_seed, epoch,
position) whatever the number of workers or the decode device; a resumed stream recomputes its
epoch's plan and continues it. With progressive resizing (data.min_res/max_res) each batch's plan
also carries the epoch's crop side. On N ranks the plan is cut to the rank's slice (bundle.Shard)
before the reader threads see it: a rank reads, decodes and crops B/N files per step, and its
crops are those of the same global positions on one rank. Evaluation batches are cut the same
way (`Shard.eval_bounds`): each rank decodes its slice of every evaluation batch only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torchvision.transforms.functional as TF
from torchvision.ops import roi_align
from torch import Tensor
from torchvision.datasets.folder import find_classes, make_dataset

from trainers.data import order
from trainers.data.bundle import WHOLE, Batch, DataBundle, DataSource, Shard, check_eval_args, check_stream_args
from trainers.data.catalog import IMAGE_EXTENSIONS, IMAGENET_MEAN as MEAN, IMAGENET_STD as STD, DataInfo, image_sizes, split_dirs
from trainers.data.jpeg import DecodeStats, decode_batch
from trainers.data.prefetch import Prefetcher
from trainers.data.resident import ResizedCropFlip
from trainers.data.resolution import train_resolution
from trainers.data.workers import loader_workers
from trainers.jobs import DataConfig

_CROP = ResizedCropFlip()


def scan(folder: Path, class_to_idx: dict[str, int] | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(path, label)]) of one split, as torchvision's ImageFolder finds them."""
    try:
        classes, found = find_classes(str(folder))
        mapping = class_to_idx or found
        unknown = sorted(set(classes) - set(mapping))
        if unknown:
            raise ValueError(f"{folder}: classes not in the training split: {unknown[:5]}")
        samples = make_dataset(str(folder), mapping, extensions=IMAGE_EXTENSIONS, allow_empty=class_to_idx is not None)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{folder}: empty or invalid image folder ({e})") from e
    if not samples:
        raise FileNotFoundError(f"{folder}: no images found")
    return sorted(mapping, key=mapping.get), samples


@dataclass(frozen=True)
class Plan:
    """One batch, decided before any file is read: which examples, the per-position seeds of
    their crops (None: the evaluation view) and the side (None: the configured image_size)."""

    indices: tuple[int, ...]
    seeds: tuple[int | None, ...]
    side: int | None


def crop_params(seeds: list[int], heights: list[int], widths: list[int]) -> dict[str, Tensor]:
    """The random-resized crops and flips of one batch (CPU float64 boxes, bool flips). Each
    position's draws come from one generator reseeded with that position's seed (the draws a
    fresh generator with that seed makes), so a crop depends on its position's seed and its
    image's size only; the batch's boxes are then computed at once."""
    n, attempts = len(seeds), _CROP.attempts
    u = torch.empty(n, attempts, 4, dtype=torch.float64)
    coin = torch.empty(n)
    gen = torch.Generator()
    for k, s in enumerate(seeds):
        gen.manual_seed(s)
        torch.rand(attempts, 4, generator=gen, dtype=torch.float64, out=u[k])  # ResizedCropFlip.uniforms' order
        torch.rand(1, generator=gen, out=coin[k : k + 1])
    return _CROP.boxes(u, coin < 0.5, torch.tensor(heights, dtype=torch.float64), torch.tensor(widths, dtype=torch.float64))


# Bytes of one float32 canvas of crops handed to roi_align: a batch holding some very large
# crops (ImageNet has files of 2000+ px) is resampled in several calls instead of one huge one.
CANVAS_BYTES = 512 * 2**20


def resized_crops(images: list[Tensor], boxes: dict[str, Tensor], side: int) -> Tensor:
    """The crops (rows i..i+h, columns j..j+w of each uint8 image) resampled to side x side and
    flipped where boxes["flip"] says, as float32 (0..255): one roi_align call per canvas.

    Each crop is copied into a zero canvas with its last row and column repeated once, so a
    bilinear sample never reads past the crop: as resizing the cropped image alone does. roi_align
    (aligned, adaptive sampling) averages ceil(h/side) x ceil(w/side) bilinear samples per output
    pixel: plain bilinear interpolation where a crop is enlarged (the same values as
    F.interpolate), a box prefilter against aliasing where it is shrunk."""
    i, j, h, w = (boxes[k].to(torch.int64).tolist() for k in ("i", "j", "h", "w"))
    device = images[0].device
    out = torch.empty(len(images), 3, side, side, device=device)
    lo = 0
    while lo < len(images):
        hi, rows, cols = lo, 0, 0
        while hi < len(images):
            r, c = max(rows, h[hi] + 1), max(cols, w[hi] + 1)
            if hi > lo and (hi - lo + 1) * 3 * r * c * 4 > CANVAS_BYTES:
                break
            rows, cols, hi = r, c, hi + 1
        canvas = torch.zeros(hi - lo, 3, rows, cols, device=device)
        for n, k in enumerate(range(lo, hi)):
            crop = images[k][:, i[k] : i[k] + h[k], j[k] : j[k] + w[k]]
            canvas[n, :, : h[k], : w[k]] = crop
            canvas[n, :, h[k], : w[k]] = crop[:, -1]
            canvas[n, :, : h[k] + 1, w[k]] = canvas[n, :, : h[k] + 1, w[k] - 1]
        rois = torch.tensor([[n, 0.0, 0.0, w[k], h[k]] for n, k in enumerate(range(lo, hi))], device=device)
        out[lo:hi] = roi_align(canvas, rois, output_size=side, spatial_scale=1.0, sampling_ratio=0, aligned=True)
        lo = hi
    flip = boxes["flip"].to(device).view(-1, 1, 1, 1)
    return torch.where(flip, out.flip(-1), out)


def train_plans(n: int, data_seed: int, batch_size: int, start_iter: int, ipe: int, augment: bool,
                cfg: DataConfig, shard: Shard = WHOLE) -> Iterator[Plan]:
    """The training stream's batches from iteration start_iter on, forever: of each global batch,
    the shard's positions (the global positions: their seeds are the 1-rank stream's)."""
    epoch, step = divmod(start_iter, ipe)
    a, b = shard.train_bounds(batch_size)
    while True:
        perm = order.epoch_permutation(data_seed, epoch, n).tolist()
        side = train_resolution(cfg, epoch)
        for s in range(step, ipe):
            positions = range(s * batch_size + a, s * batch_size + b)
            seeds = tuple(order.sample_seed(data_seed, epoch, p) if augment else None for p in positions)
            yield Plan(tuple(perm[p] for p in positions), seeds, side)
        epoch, step = epoch + 1, 0


class FolderTransform:
    """Decoded images of one batch -> the normalised float batch on the device."""

    def __init__(self, samples: list[tuple[str, int]], size: int, eval_size: int, device: torch.device, stats: DecodeStats):
        self.samples, self.size, self.eval_size = samples, size, eval_size
        self.device, self.stats = device, stats
        self._mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255.0
        self._inv_std = 1.0 / (torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255.0)

    def paths(self, plan: Plan) -> list[str]:
        return [self.samples[i][0] for i in plan.indices]

    def crop(self, images: list[Tensor], seeds: list[int], side: int) -> Tensor:
        p = crop_params(seeds, [im.shape[1] for im in images], [im.shape[2] for im in images])
        return resized_crops(images, p, side)

    def centre(self, images: list[Tensor], side: int) -> Tensor:
        # The evaluation view: the same fraction of the image at any side.
        resize = self.eval_size if side == self.size else round(side * self.eval_size / self.size)
        out = torch.empty(len(images), 3, side, side, device=self.device)
        for k, im in enumerate(images):
            out[k] = TF.center_crop(TF.resize(im[None].float(), [resize], antialias=True), [side, side])[0]
        return out

    def decode(self, plan: Plan, contents: list) -> list[Tensor]:
        """The prefetcher's first stage: the batch's files decoded on the device."""
        return decode_batch(contents, self.paths(plan), self.device, self.stats, MEAN)

    def finish(self, plan: Plan, images: list[Tensor]) -> Batch:
        """The second stage (overlapping the next batch's decode): crop, resize, flip, normalise."""
        side = self.size if plan.side is None else plan.side
        if plan.seeds and plan.seeds[0] is not None:
            x = self.crop(images, list(plan.seeds), side)
        else:
            x = self.centre(images, side)
        y = torch.tensor([self.samples[i][1] for i in plan.indices], dtype=torch.int64).to(self.device)
        return (x - self._mean) * self._inv_std, y

    def __call__(self, plan: Plan, contents: list) -> Batch:
        return self.finish(plan, self.decode(plan, contents))


class FolderBundle(DataBundle):
    def __init__(self, info: DataInfo, train: list, test: list, size: int, eval_size: int, augment: bool,
                 device: torch.device, num_workers: int, cfg: DataConfig):
        self.info = info
        self.cfg = cfg
        self.device = torch.device(device)
        self.stats = DecodeStats(device=str(self.device))
        self.train = FolderTransform(train, size, eval_size, self.device, self.stats)
        self.test = FolderTransform(test, size, eval_size, self.device, self.stats)
        self.augment = augment
        self.num_workers = max(1, num_workers)  # reader threads (0, "in the main process", means one)
        self.depth = 3 if self.device.type == "cuda" else 2  # finished batches held ahead of the loop

    def _batches(self, transform: FolderTransform, plans) -> Iterator[Batch]:
        # A generator, so no thread starts before the first batch is asked for, and closing it
        # (or dropping it) stops the prefetcher.
        prefetcher = Prefetcher(plans, transform.paths, transform.decode, self.num_workers, self.depth, self.device,
                                finish=transform.finish)
        try:
            yield from prefetcher
        finally:
            prefetcher.close()

    def train_stream(self, data_seed: int, batch_size: int, start_iter: int, shard: Shard = WHOLE) -> Iterator[Batch]:
        check_stream_args(start_iter)
        ipe = self.iterations_per_epoch(batch_size)
        shard.train_bounds(batch_size)  # refused here, not in the prefetch thread
        # Without augmentation (seed None) training images get the evaluation transform. The
        # plans are cut to the shard before the reader threads see them: only its files are read.
        plans = train_plans(self.info.num_train, data_seed, batch_size, start_iter, ipe, self.augment, self.cfg, shard)
        return self._batches(self.train, plans)

    def eval_batches(self, split: str, batch_size: int, max_examples: int | None = None,
                     shard: Shard = WHOLE) -> Iterator[Batch]:
        if split == "test":
            count = check_eval_args(split, batch_size, max_examples, self.info.num_test, "test")
            transform, idx = self.test, list(range(count))
        else:
            check_eval_args(split, batch_size, max_examples, self.info.num_train, "train")
            transform, idx = self.train, order.eval_train_subset(self.info.num_train, max_examples).tolist()
        # Cut to the shard before the reader threads see the plans: a rank reads and decodes its
        # slice of each batch only. The centre crop is per image, so a slice's images are the
        # same as within the whole batch.
        plans = [Plan(tuple(idx[lo:hi]), (None,) * (hi - lo), None) for lo, hi in shard.eval_bounds(len(idx), batch_size)]
        return self._batches(transform, plans)


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

    def open(self, device: torch.device, *, num_workers: int | None = None) -> DataBundle:
        info, train, test = self.scan_splits()
        size, eval_size = image_sizes(self.cfg)
        workers = loader_workers() if num_workers is None else num_workers
        return FolderBundle(info, train, test, size, eval_size, self.cfg.augment, device, workers, self.cfg)


def scanned_info(cfg: DataConfig) -> DataInfo:
    """The DataInfo of the image folder under cfg.root, scanned (ondisk.describe calls this)."""
    return ImageFolderSource(cfg).scan_splits()[0]
