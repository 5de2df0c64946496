"""Device-resident data sets (digits, synthetic, CIFAR, FFCV CIFAR): every example lives on the
device as one tensor, batches are gathered with advanced indexing, and augmentation runs batched
on the device with parameters drawn once per epoch (order.py) and indexed by position.

Images are stored as uint8 (N, C, H, W) and normalised per batch to float32; feature vectors
(digits) are stored as float32 and served as they are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.data import order
from trainers.data.bundle import WHOLE, Batch, DataBundle, DataInfo, Shard, check_eval_args, check_stream_args


class Augmentation(Protocol):
    def draw(self, gen: torch.Generator, n: int, height: int, width: int) -> dict[str, Tensor]:
        """Parameters for the n positions of one epoch (CPU tensors, first dimension n)."""

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Augment a uint8 batch (B, C, H, W) with its positions' parameters; returns float (0..255)."""


@dataclass(frozen=True)
class PadCropFlip:
    """Random crop of the original size from the image zero-padded by `pad` pixels on each side
    (black border, as torchvision's RandomCrop(size, padding) does before normalisation), then a
    horizontal flip with probability 1/2. Done as one gather, so it is exact on uint8 pixels."""

    pad: int = 4

    def draw(self, gen: torch.Generator, n: int, height: int, width: int) -> dict[str, Tensor]:
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=gen)
        flip = torch.rand(n, generator=gen) < 0.5
        return {"dy": offsets[:, 0], "dx": offsets[:, 1], "flip": flip}

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        b, c, h, w = x.shape
        dev = x.device
        padded = F.pad(x, (self.pad, self.pad, self.pad, self.pad))
        ar_h = torch.arange(h, device=dev)
        ar_w = torch.arange(w, device=dev)
        rows = params["dy"][:, None] + ar_h  # (B, H)
        cols = torch.where(params["flip"][:, None], w - 1 - ar_w, ar_w) + params["dx"][:, None]  # (B, W)
        out = padded[
            torch.arange(b, device=dev)[:, None, None, None],
            torch.arange(c, device=dev)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
        return out.float()


@dataclass(frozen=True)
class ResizedCropFlip:
    """Random-resized crop (area fraction `scale`, aspect ratio `ratio`, torchvision's 10-attempt
    rule with a centre-crop fallback) back to the stored size (or to `size`: progressive
    resizing), then a horizontal flip with probability 1/2; bilinear, batched with
    affine_grid/grid_sample."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    attempts: int = 10

    def draw(self, gen: torch.Generator, n: int, height: int, width: int) -> dict[str, Tensor]:
        u, flip = self.uniforms(gen, n)
        return self.boxes(u, flip, torch.full((n,), height, dtype=torch.float64), torch.full((n,), width, dtype=torch.float64))

    def uniforms(self, gen: torch.Generator, n: int) -> tuple[Tensor, Tensor]:
        """The random draws of n crops, (u (n, attempts, 4) float64, flip (n,) bool): they need
        no image size, so file loaders draw them before decoding (jpeg_folder.py)."""
        u = torch.rand(n, self.attempts, 4, generator=gen, dtype=torch.float64)
        flip = torch.rand(n, generator=gen) < 0.5
        return u, flip

    def boxes(self, u: Tensor, flip: Tensor, height: Tensor, width: Tensor) -> dict[str, Tensor]:
        """Crop boxes from `uniforms`' draws for images of the given heights and widths (float64,
        one per crop): the rule of torchvision's RandomResizedCrop, vectorised over images of
        different sizes. All float64 on the CPU, so every decode device gets the same boxes."""
        height = height.to(torch.float64)[:, None]
        width = width.to(torch.float64)[:, None]
        n = len(u)
        target = height * width * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[..., 0])
        log_lo, log_hi = torch.log(torch.tensor(self.ratio, dtype=torch.float64))
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
        w = torch.round(torch.sqrt(target * aspect))
        h = torch.round(torch.sqrt(target / aspect))
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
        pick = first.clamp(min=0)[:, None]
        h_sel = h.gather(1, pick)[:, 0]
        w_sel = w.gather(1, pick)[:, 0]
        height, width = height[:, 0], width[:, 0]
        i = torch.floor(u[..., 2].gather(1, pick)[:, 0] * (height - h_sel + 1))
        j = torch.floor(u[..., 3].gather(1, pick)[:, 0] * (width - w_sel + 1))
        # Fallback (no attempt fit): the largest centred crop with an allowed aspect ratio.
        in_ratio = width / height
        too_tall, too_wide = in_ratio < self.ratio[0], in_ratio > self.ratio[1]
        fw = torch.where(too_wide, torch.round(height * self.ratio[1]), width)
        fh = torch.where(too_tall, torch.round(width / self.ratio[0]), height)
        none = first < 0
        h_sel = torch.where(none, fh, h_sel)
        w_sel = torch.where(none, fw, w_sel)
        i = torch.where(none, torch.floor((height - fh) / 2), i)
        j = torch.where(none, torch.floor((width - fw) / 2), j)
        return {"i": i, "j": j, "h": h_sel, "w": w_sel, "flip": flip}

    def apply(self, x: Tensor, params: dict[str, Tensor], size: int | None = None) -> Tensor:
        b, _, height, width = x.shape
        i, j, h, w = (params[k].to(torch.float32) for k in ("i", "j", "h", "w"))
        sign = 1.0 - 2.0 * params["flip"].to(torch.float32)
        # Output pixel at normalised x_o samples the input at (2j + w)/W - 1 + x_o * w/W (align_corners=False).
        theta = torch.zeros(b, 2, 3, device=x.device)
        theta[:, 0, 0] = sign * w / width
        theta[:, 0, 2] = (2 * j + w) / width - 1
        theta[:, 1, 1] = h / height
        theta[:, 1, 2] = (2 * i + h) / height - 1
        # theta is in normalised coordinates: the same crop box whatever the output size.
        out_h, out_w = (height, width) if size is None else (size, size)
        grid = F.affine_grid(theta, [b, x.shape[1], out_h, out_w], align_corners=False)
        return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


class ResidentBundle(DataBundle):
    def __init__(
        self,
        info: DataInfo,
        train: tuple[Tensor, Tensor],
        test: tuple[Tensor, Tensor],
        device: torch.device,
        *,
        augmentation: Augmentation | None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        train_side: Callable[[int], int | None] | None = None,
    ):
        """train_side: epoch -> side of the training images (progressive resizing; resolution.py),
        None for the stored size. Resizing needs an augmentation that takes a size (ResizedCropFlip)."""
        self.info = info
        self.device = torch.device(device)
        self.train_x, self.train_y = (t.to(self.device) for t in train)
        self.test_x, self.test_y = (t.to(self.device) for t in test)
        for name, x, y, n in (("train", self.train_x, self.train_y, info.num_train), ("test", self.test_x, self.test_y, info.num_test)):
            if len(x) != n or len(y) != n or tuple(x.shape[1:]) != info.input_shape:
                raise ValueError(f"{name} split has {tuple(x.shape)} / {len(y)} labels, expected {n} x {info.input_shape}")
        self.images = self.train_x.dtype == torch.uint8
        if self.images and (mean is None or std is None):
            raise ValueError("uint8 images need the per-channel mean and std for normalisation")
        if self.images:
            shape = (1, -1, 1, 1)
            self._shift = torch.tensor(mean, device=self.device).view(shape) * 255.0
            self._scale = 1.0 / (torch.tensor(std, device=self.device).view(shape) * 255.0)
        self.augmentation = augmentation
        self.train_side = train_side
        if train_side is not None and augmentation is not None and not isinstance(augmentation, ResizedCropFlip):
            raise ValueError(f"progressive resizing needs random-resized crops, not {type(augmentation).__name__}")

    def _finish(self, x: Tensor) -> Tensor:
        if not self.images:
            return x
        return (x.float() - self._shift) * self._scale

    def train_stream(self, data_seed: int, batch_size: int, start_iter: int, shard: Shard = WHOLE) -> Iterator[Batch]:
        """The data is in device memory already (no file to read): each rank makes the global
        batch and keeps its slice, the cheap, obviously N-independent way."""
        check_stream_args(start_iter)
        ipe = self.iterations_per_epoch(batch_size)
        a, b = shard.train_bounds(batch_size)
        for x, y in self._global_stream(data_seed, batch_size, start_iter, ipe):
            yield (x, y) if shard.world_size == 1 else (x[a:b], y[a:b])

    def _global_stream(self, data_seed: int, batch_size: int, start_iter: int, ipe: int) -> Iterator[Batch]:
        n = self.info.num_train
        epoch, step = divmod(start_iter, ipe)
        while True:
            perm = order.epoch_permutation(data_seed, epoch, n).to(self.device)
            side = None if self.train_side is None else self.train_side(epoch)
            params = None
            if self.augmentation is not None:
                _, _, h, w = self.train_x.shape
                drawn = self.augmentation.draw(order.augmentation_generator(data_seed, epoch), n, h, w)
                params = {k: v.to(self.device) for k, v in drawn.items()}
            for s in range(step, ipe):
                lo, hi = s * batch_size, (s + 1) * batch_size
                idx = perm[lo:hi]
                x = self.train_x[idx]
                if params is not None:
                    batch_params = {k: v[lo:hi] for k, v in params.items()}
                    x = self.augmentation.apply(x, batch_params) if side is None else self.augmentation.apply(x, batch_params, side)
                elif side is not None and side != x.shape[-1]:
                    # Unaugmented: the whole stored image, resized (antialiased, as a decoder would).
                    x = F.interpolate(x.float(), size=(side, side), mode="bilinear", antialias=True, align_corners=False)
                yield self._finish(x), self.train_y[idx]
            epoch, step = epoch + 1, 0

    def eval_batches(self, split: str, batch_size: int, max_examples: int | None = None,
                     shard: Shard = WHOLE) -> Iterator[Batch]:
        if split == "test":
            count = check_eval_args(split, batch_size, max_examples, self.info.num_test, "test")
            x, y = self.test_x[:count], self.test_y[:count]
        else:
            check_eval_args(split, batch_size, max_examples, self.info.num_train, "train")
            idx = order.eval_train_subset(self.info.num_train, max_examples).to(self.device)
            x, y = self.train_x[idx], self.train_y[idx]
        # Resident: the slice is cut in memory (nothing is read); only it is normalised.
        for lo, hi in shard.eval_bounds(len(y), batch_size):
            yield self._finish(x[lo:hi]), y[lo:hi]


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (as fractions of 255) of uint8 images (N, C, H, W)."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for lo in range(0, len(images), 1024):  # chunked: ImageNet-sized sets must not be copied to float64 whole
        x = images[lo : lo + 1024].to(torch.float64).div_(255.0).transpose(0, 1).reshape(c, -1)
        total += x.sum(1)
        total_sq += (x * x).sum(1)
    count = images.numel() // c
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-6).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def standard_augmentation(side: int) -> Augmentation:
    """CIFAR-sized images get pad-4 random crops; ImageNet-sized ones (side >= 64) random-resized crops."""
    if side >= 64:
        return ResizedCropFlip()
    return PadCropFlip(pad=max(1, side // 8))
