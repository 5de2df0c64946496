"""FFCV: the two .beton readers (beton_writer.py writes the files: `lth-beton`).

Readers:
- `ffcv_cifar` (data.root = the directory with train.beton/test.beton): decodes both files
  once with ffcv's Loader into uint8 tensors and serves them from the device-resident path
  (resident.py), the fast path for small images. Order and augmentation are a pure function
  of (data_seed, epoch, position), exactly as for `cifar10`.
- `ffcv_imagenet`: ffcv's Loader with its JPEG pipeline (RandomResizedCropRGBImageDecoder +
  RandomHorizontalFlip for training, CenterCropRGBImageDecoder for evaluation: crop the centre
  image_size/eval_image_size of the shorter side, then resize to image_size, the same view as
  resize-then-centre-crop). Progressive resizing (data.min_res/max_res): before each epoch
  the training decoder's output_size is set to that epoch's side (resolution.py); ffcv sizes its
  buffers from it when the epoch starts, so no pipeline is rebuilt.
  Determinism: the ORDER is ours: a TraversalOrder hands the Loader
  `order.epoch_permutation(data_seed, epoch)` (from the resume position on), so resuming at any
  iteration feeds the same examples in the same batches. The AUGMENTATION is not: ffcv draws
  crop boxes and flips with numpy's RNG inside numba-compiled, multi-threaded code, with no
  per-sample seed to set, so crops and flips differ between runs and after a resume. Use
  `imagenet` (file-based, per-position seeds) where bitwise-reproducible augmentation matters,
  or `augment: false`.
  On N ranks each rank's Loader covers its slice of every batch only (bundle.Shard): batch size
  B/N over the slices of the epoch's permutation, so a rank reads and decodes B/N images per step.

ffcv is an optional extra: it is imported inside the functions here only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from trainers.data import order
from trainers.data.bundle import WHOLE, Batch, DataBundle, DataSource, Shard, check_eval_args, check_stream_args
from trainers.data.catalog import FFCV_INSTALL, IMAGENET_MEAN, IMAGENET_STD, DataInfo, beton_paths, image_sizes
from trainers.data.resident import ResidentBundle, channel_stats, standard_augmentation
from trainers.data.resolution import train_resolution
from trainers.jobs import DataConfig


def import_ffcv():
    try:
        import ffcv  # noqa: F401
        from ffcv import fields, loader, reader, transforms, writer  # noqa: F401
        from ffcv.fields import decoders  # noqa: F401
    except Exception as e:  # ImportError, or numba/numpy incompatibilities raised at import
        raise ImportError(
            f"FFCV data sets need ffcv, which is not importable here ({e!r}): {FFCV_INSTALL}"
        ) from e
    return ffcv


# ---- reading -------------------------------------------------------------------------------


def _reader(path: Path):
    import_ffcv()
    from ffcv.reader import Reader

    try:
        reader = Reader(str(path))
    except Exception as e:
        raise ValueError(f"{path}: not a readable .beton file ({e})") from e
    for name in ("image", "label"):
        if name not in reader.handlers:
            raise ValueError(f"{path}: no {name!r} field (fields: {list(reader.handlers)}); write it with lth-beton")
    return reader


def header_info(paths: dict[str, Path], image_shape: tuple[int, ...] | None, num_classes: int | None) -> DataInfo:
    """DataInfo from the betons' headers (sample counts, labels, sizes): betons without info.json."""
    readers = {s: _reader(p) for s, p in paths.items()}
    labels = readers["train"].metadata["f1"]
    if image_shape is None:
        m = readers["train"].metadata["f0"][0]
        image_shape = (3, int(m["height"]), int(m["width"]))
    classes = num_classes or int(labels.max()) + 1
    return DataInfo(image_shape, classes, int(readers["train"].num_samples), int(readers["test"].num_samples))


def _decode_all(path: Path, num_workers: int) -> tuple[Tensor, Tensor]:
    """Every (image, label) of a constant-size beton as uint8 (N, C, H, W) and int64 tensors."""
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    reader = _reader(path)
    sizes = reader.metadata["f0"][["height", "width"]]
    if len(np.unique(sizes)) != 1:
        raise ValueError(f"{path}: images of different sizes; use ffcv_imagenet for variable-size betons")
    loader = Loader(
        str(path), batch_size=1024, num_workers=num_workers, order=OrderOption.SEQUENTIAL, drop_last=False,
        pipelines={"image": [SimpleRGBImageDecoder(), ToTensor()], "label": [IntDecoder(), ToTensor()]},
    )
    xs, ys = [], []
    for x, y in loader:  # ffcv reuses its output buffers: copy each batch
        xs.append(x.permute(0, 3, 1, 2).contiguous())
        ys.append(y.reshape(-1).to(torch.int64, copy=True))
    return torch.cat(xs), torch.cat(ys)


def _workers(num_workers: int | None) -> int:
    from trainers.data.workers import loader_workers

    return loader_workers() if num_workers is None else max(1, num_workers)


class FfcvCifarSource(DataSource):
    def open(self, device: torch.device, *, num_workers: int | None = None) -> DataBundle:
        paths = beton_paths(self.cfg.root)
        import_ffcv()
        workers = _workers(num_workers)
        train = _decode_all(paths["train"], workers)
        test = _decode_all(paths["test"], workers)
        for split, (x, y), wanted in (("train", train, self.cfg.num_train), ("test", test, self.cfg.num_test)):
            idx = order.data_subset(len(y), wanted, self.cfg.seed, split)
            if idx is not None:
                x, y = x[idx], y[idx]
            if split == "train":
                train = (x, y)
            else:
                test = (x, y)
        labels_max = int(max(train[1].max(), test[1].max()))
        classes = self.cfg.num_classes or labels_max + 1
        if labels_max >= classes:
            raise ValueError(f"{paths['train'].parent}: label {labels_max} but data.num_classes={classes}")
        info = DataInfo(tuple(train[0].shape[1:]), classes, len(train[1]), len(test[1]))
        mean, std = channel_stats(train[0])
        return ResidentBundle(
            info, train, test, device,
            augmentation=standard_augmentation(info.input_shape[-1]) if self.cfg.augment else None,
            mean=mean, std=std,
        )


class FfcvLoaderBundle(DataBundle):
    def __init__(self, info: DataInfo, paths: dict[str, Path], cfg: DataConfig, device: torch.device, num_workers: int,
                 train_indices: np.ndarray, test_indices: np.ndarray):
        self.info = info
        self.paths = paths
        self.cfg = cfg
        self.augment = cfg.augment
        self.size, self.eval_size = image_sizes(cfg)
        self.device = torch.device(device)
        self.num_workers = num_workers
        self.train_indices = train_indices
        self.test_indices = test_indices
        self._eval_loaders: dict[tuple[str, int, int, Shard], object] = {}
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255.0
        self._inv_std = 1.0 / (torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255.0)

    def _make_loader(self, path: Path, batch_size: int, indices: np.ndarray, train: bool, drop_last: bool):
        """(ffcv Loader, its image decoder: the node whose output_size sets the batches' side)."""
        from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder, RandomResizedCropRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import RandomHorizontalFlip, ToDevice, ToTensor
        from ffcv.traversal_order import Sequential

        size = (self.size, self.size)
        if train and self.augment:
            decoder = RandomResizedCropRGBImageDecoder(size)
            image = [decoder, RandomHorizontalFlip()]
        else:
            decoder = CenterCropRGBImageDecoder(size, ratio=self.size / self.eval_size)
            image = [decoder]
        cuda = self.device.type == "cuda"
        image += [ToTensor(), ToDevice(self.device, non_blocking=cuda)]
        # No Squeeze: on a batch of one (a rank's slice of a short evaluation batch) it makes the
        # labels 0-d, which ToDevice cannot index (its worker dies and the loader waits forever);
        # _finish flattens the (B, 1) labels instead.
        label = [IntDecoder(), ToTensor(), ToDevice(self.device, non_blocking=cuda)]
        loader = Loader(
            str(path), batch_size=batch_size, num_workers=self.num_workers, order=OrderOption.SEQUENTIAL,
            indices=indices, drop_last=drop_last, pipelines={"image": image, "label": label}, os_cache=True,
        )
        # The sequential order yields `traversal_order.indices` as they are: we set them to our
        # permutation before each pass, so ffcv's own (seed, epoch) shuffling is never used.
        assert isinstance(loader.traversal_order, Sequential)
        return loader, decoder

    def _finish(self, x: Tensor, y: Tensor) -> Batch:
        # (B, H, W, C) uint8 -> normalised float (B, C, H, W) in channels_last memory; copies out of ffcv's buffers.
        x = (x.permute(0, 3, 1, 2).float() - self._mean) * self._inv_std
        return x, y.reshape(-1).to(torch.int64, copy=True)

    def train_stream(self, data_seed: int, batch_size: int, start_iter: int, shard: Shard = WHOLE) -> Iterator[Batch]:
        check_stream_args(start_iter)
        ipe = self.iterations_per_epoch(batch_size)
        n = self.info.num_train
        # A loader over this rank's examples only: its batches are the slices [a, b) of the global
        # batches, so it reads and decodes (b - a) images per step, not batch_size.
        a, b = shard.train_bounds(batch_size)
        loader, decoder = self._make_loader(self.paths["train"], b - a, self.train_indices, train=True, drop_last=True)
        epoch, step = divmod(start_iter, ipe)
        while True:
            perm = order.epoch_permutation(data_seed, epoch, n).numpy()
            side = train_resolution(self.cfg, epoch) or self.size
            # Read when the epoch's iterator allocates its buffers (as ffcv-imagenet's ramp does).
            decoder.output_size = (side, side)
            batches = perm[step * batch_size : ipe * batch_size].reshape(ipe - step, batch_size)
            loader.traversal_order.indices = self.train_indices[batches[:, a:b].reshape(-1)]
            for x, y in loader:
                yield self._finish(x, y)
            epoch, step = epoch + 1, 0

    def eval_batches(self, split: str, batch_size: int, max_examples: int | None = None,
                     shard: Shard = WHOLE) -> Iterator[Batch]:
        if split == "test":
            count = check_eval_args(split, batch_size, max_examples, self.info.num_test, "test")
            indices = self.test_indices[:count]
        else:
            check_eval_args(split, batch_size, max_examples, self.info.num_train, "train")
            indices = self.train_indices[order.eval_train_subset(self.info.num_train, max_examples).numpy()]
        bounds = list(shard.eval_bounds(len(indices), batch_size))
        if not bounds:  # a gang larger than the split: this rank has nothing to evaluate
            return
        # A loader over this rank's slices only, concatenated: every slice of a full batch has the
        # first one's length and a short last batch's slice is no longer (rank_slice), so batches
        # of that length are exactly the slices (the last one short where it is).
        per_rank = bounds[0][1] - bounds[0][0]
        mine = np.concatenate([indices[lo:hi] for lo, hi in bounds])
        key = (split, batch_size, len(indices), shard)
        if key not in self._eval_loaders:  # building a Loader compiles its pipeline (seconds): once per key
            self._eval_loaders[key] = self._make_loader(self.paths[split], per_rank, mine, train=False, drop_last=False)[0]
        for x, y in self._eval_loaders[key]:
            yield self._finish(x, y)


class FfcvImagenetSource(DataSource):
    def _image_shape(self) -> tuple[int, int, int]:
        size, _ = image_sizes(self.cfg)
        return (3, size, size)

    def open(self, device: torch.device, *, num_workers: int | None = None) -> DataBundle:
        paths = beton_paths(self.cfg.root)
        readers = {s: _reader(p) for s, p in paths.items()}
        indices = {}
        for split, wanted in (("train", self.cfg.num_train), ("test", self.cfg.num_test)):
            n = int(readers[split].num_samples)
            idx = order.data_subset(n, wanted, self.cfg.seed, split)
            indices[split] = (np.arange(n) if idx is None else idx.numpy()).astype(np.int64)
        labels = readers["train"].metadata["f1"]
        classes = self.cfg.num_classes or int(labels.max()) + 1
        info = DataInfo(self._image_shape(), classes, len(indices["train"]), len(indices["test"]))
        return FfcvLoaderBundle(info, paths, self.cfg, device, _workers(num_workers), indices["train"], indices["test"])
