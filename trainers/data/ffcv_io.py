"""FFCV: writing any data set of this package to .beton files, and the two FFCV readers.

Writer: `write_beton(cfg, out_dir)` (and the `lth-beton` command) writes out_dir/train.beton,
out_dir/test.beton (fields "image": RGBImageField, "label": IntField) and out_dir/info.json
(the DataInfo and the source config). Images are stored as raw pixels by default for
CIFAR-sized sources (exact round trip) and as JPEG for image folders (`--max-resolution`
caps the stored side, as ImageNet betons usually do).

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

ffcv is an optional extra: it is imported inside the functions here only.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from trainers.data import order
from trainers.data.bundle import Batch, DataBundle, DataSource, check_eval_args, check_stream_args
from trainers.data.catalog import BETON_INFO_FILE, BETON_SPLITS, IMAGENET_MEAN, IMAGENET_STD, DataInfo, beton_paths, image_sizes
from trainers.data.resident import ResidentBundle, channel_stats, standard_augmentation
from trainers.data.resolution import train_resolution
from trainers.jobs import DataConfig

SPLITS = BETON_SPLITS
INFO_FILE = BETON_INFO_FILE


def import_ffcv():
    try:
        import ffcv  # noqa: F401
        from ffcv import fields, loader, reader, transforms, writer  # noqa: F401
        from ffcv.fields import decoders  # noqa: F401
    except Exception as e:  # ImportError, or numba/numpy incompatibilities raised at import
        raise ImportError(
            f"FFCV data sets need the optional ffcv extra (pip install 'lth-sweep[ffcv]'); importing it failed: {e!r}"
        ) from e
    return ffcv


# ---- writing -------------------------------------------------------------------------------


class _ArrayImages:
    """Indexable (HWC uint8 image, label) pairs for ffcv's DatasetWriter."""

    def __init__(self, images: Tensor, labels: Tensor):
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = labels.numpy()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


class _FileImages:
    def __init__(self, samples: list[tuple[str, int]]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as im:
            return im.convert("RGB"), label


def _source_splits(cfg: DataConfig) -> tuple[DataInfo, dict[str, object], bool]:
    """(info, {split: indexable (image, label) pairs}, small images?) of the data set to convert."""
    from trainers.data.sources import DATASETS, valid_names

    if cfg.name not in DATASETS:
        raise ValueError(f"unknown data set {cfg.name!r}; valid names: {valid_names()}")
    if cfg.name == "digits":
        raise ValueError("digits are 64-feature vectors, not images: there is nothing to write to a .beton")
    if cfg.name.startswith("ffcv_"):
        raise ValueError(f"{cfg.name} is already an FFCV data set")
    source = DATASETS[cfg.name](cfg)
    source.check()
    if cfg.name == "imagenet":
        info, train, test = source.scan_splits()
        return info, {"train": _FileImages(train), "test": _FileImages(test)}, False
    bundle = source.open(torch.device("cpu"))
    assert isinstance(bundle, ResidentBundle)
    splits = {"train": _ArrayImages(bundle.train_x, bundle.train_y), "test": _ArrayImages(bundle.test_x, bundle.test_y)}
    return bundle.info, splits, bundle.info.input_shape[-1] < 64


def write_beton(
    cfg: DataConfig,
    out_dir: str | Path,
    *,
    write_mode: str | None = None,
    max_resolution: int | None = None,
    jpeg_quality: int = 90,
    num_workers: int = 1,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Convert the data set `cfg` to out_dir/{train,test}.beton (+ info.json); returns the paths."""
    import_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    out = Path(out_dir).expanduser()
    paths = {s: out / f"{s}.beton" for s in SPLITS}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)} (pass overwrite=True / --overwrite)")
    info, splits, small = _source_splits(cfg)
    mode = write_mode or ("raw" if small else "jpg")
    if mode not in ("raw", "jpg", "smart", "proportion"):
        raise ValueError(f"write_mode must be raw, jpg, smart or proportion, got {mode!r}")
    out.mkdir(parents=True, exist_ok=True)
    for split, dataset in splits.items():
        tmp = paths[split].with_suffix(".beton.tmp")
        fields = {
            "image": RGBImageField(write_mode=mode, max_resolution=max_resolution, jpeg_quality=jpeg_quality),
            "label": IntField(),
        }
        DatasetWriter(str(tmp), fields, num_workers=num_workers).from_indexed_dataset(dataset)
        tmp.replace(paths[split])  # atomic: a half-written beton never carries the final name
    meta = {"info": asdict(info), "source": asdict(cfg), "write_mode": mode, "max_resolution": max_resolution}
    (out / INFO_FILE).write_text(json.dumps(meta, indent=2))
    paths["info"] = out / INFO_FILE
    return paths


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
        self._eval_loaders: dict[tuple[str, int, int], object] = {}
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255.0
        self._inv_std = 1.0 / (torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255.0)

    def _make_loader(self, path: Path, batch_size: int, indices: np.ndarray, train: bool, drop_last: bool):
        """(ffcv Loader, its image decoder: the node whose output_size sets the batches' side)."""
        from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder, RandomResizedCropRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToDevice, ToTensor
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
        label = [IntDecoder(), ToTensor(), Squeeze(), ToDevice(self.device, non_blocking=cuda)]
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

    def train_stream(self, data_seed: int, batch_size: int, start_iter: int) -> Iterator[Batch]:
        check_stream_args(start_iter)
        ipe = self.iterations_per_epoch(batch_size)
        n = self.info.num_train
        loader, decoder = self._make_loader(self.paths["train"], batch_size, self.train_indices, train=True, drop_last=True)
        epoch, step = divmod(start_iter, ipe)
        while True:
            perm = order.epoch_permutation(data_seed, epoch, n).numpy()
            side = train_resolution(self.cfg, epoch) or self.size
            # Read when the epoch's iterator allocates its buffers (as ffcv-imagenet's ramp does).
            decoder.output_size = (side, side)
            loader.traversal_order.indices = self.train_indices[perm[step * batch_size : ipe * batch_size]]
            for x, y in loader:
                yield self._finish(x, y)
            epoch, step = epoch + 1, 0

    def eval_batches(self, split: str, batch_size: int, max_examples: int | None = None) -> Iterator[Batch]:
        if split == "test":
            count = check_eval_args(split, batch_size, max_examples, self.info.num_test, "test")
            indices = self.test_indices[:count]
        else:
            check_eval_args(split, batch_size, max_examples, self.info.num_train, "train")
            indices = self.train_indices[order.eval_train_subset(self.info.num_train, max_examples).numpy()]
        key = (split, batch_size, len(indices))
        if key not in self._eval_loaders:  # building a Loader compiles its pipeline (seconds): once per key
            self._eval_loaders[key] = self._make_loader(self.paths[split], batch_size, indices, train=False, drop_last=False)[0]
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


# ---- command line --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from trainers.data.catalog import valid_names

    p = argparse.ArgumentParser(prog="lth-beton", description="Write a data set to FFCV .beton files (train.beton, test.beton, info.json).")
    p.add_argument("--data", required=True, help=f"source data set: {valid_names()}")
    p.add_argument("--root", help="source directory (cifar10, cifar100, imagenet)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--image-size", type=int, help="synthetic: image side")
    p.add_argument("--num-classes", type=int, help="synthetic: classes")
    p.add_argument("--num-train", type=int, help="synthetic: training examples; others: a fixed subset")
    p.add_argument("--num-test", type=int, help="synthetic: test examples; others: a fixed subset")
    p.add_argument("--channels", type=int, default=3, help="synthetic: channels (must be 3 for a beton)")
    p.add_argument("--seed", type=int, default=0, help="synthetic generation seed / subset seed")
    p.add_argument("--write-mode", choices=["raw", "jpg", "smart", "proportion"], help="default: raw below 64 px, else jpg")
    p.add_argument("--max-resolution", type=int, help="cap on the stored image side (ImageNet betons: e.g. 512)")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    if a.channels != 3:
        p.error("--channels must be 3: .beton images are RGB")
    cfg = DataConfig(
        name=a.data, root=a.root, image_size=a.image_size, num_classes=a.num_classes, num_train=a.num_train,
        num_test=a.num_test, channels=a.channels, seed=a.seed, augment=False,
    )
    try:
        paths = write_beton(cfg, a.out, write_mode=a.write_mode, max_resolution=a.max_resolution,
                            jpeg_quality=a.jpeg_quality, num_workers=a.workers, overwrite=a.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"lth-beton: error: {e}", file=sys.stderr)
        return 2
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
