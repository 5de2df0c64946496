"""Writing any data set of this package to FFCV .beton files: `write_beton(cfg, out_dir)` and the
`lth-beton` command write out_dir/train.beton, out_dir/test.beton (fields "image":
RGBImageField, "label": IntField) and out_dir/info.json (the DataInfo and the source config),
which ffcv_io.py's readers read. Images are stored as raw pixels by default for CIFAR-sized
sources (exact round trip) and as JPEG for image folders (`--max-resolution` caps the stored
side, as ImageNet betons usually do).

It converts from every loader of the registry, so it sits above sources.py (ffcv_io.py, a
loader the registry holds, does not import it).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from trainers.data.catalog import BETON_INFO_FILE as INFO_FILE, BETON_SPLITS as SPLITS, DataInfo, valid_names
from trainers.data.ffcv_io import import_ffcv
from trainers.data.ondisk import check_available
from trainers.data.resident import ResidentBundle
from trainers.data.sources import DATASETS
from trainers.jobs import DataConfig


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
    if cfg.name not in DATASETS:
        raise ValueError(f"unknown data set {cfg.name!r}; valid names: {valid_names()}")
    if cfg.name == "digits":
        raise ValueError("digits are 64-feature vectors, not images: there is nothing to write to a .beton")
    if cfg.name.startswith("ffcv_"):
        raise ValueError(f"{cfg.name} is already an FFCV data set")
    check_available(cfg)
    source = DATASETS[cfg.name](cfg)
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


# ---- command line --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
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
