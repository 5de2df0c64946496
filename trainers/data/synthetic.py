"""Class-conditional synthetic images, generated from cfg.seed at any resolution.

Each class has a smooth prototype (low-frequency noise, upsampled); an example is its class's
prototype shifted by a few pixels, with random contrast and brightness, a smooth per-example
distractor pattern and pixel noise, squashed to [0, 255]. Learnable (a linear model beats chance
by far) but not trivial, and generated vectorised on CPU in chunks.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.data import order
from trainers.data.bundle import DataBundle, DataSource
from trainers.data.catalog import DataInfo, synthetic_info
from trainers.data.resolution import progressive, train_resolution
from trainers.data.resident import ResidentBundle, channel_stats, standard_augmentation

_LOW_RES = 4  # side of the random patterns before upsampling: sets how smooth they are
_CHUNK = 2048  # examples per generation chunk (fixed: the data must not depend on it)


def generate(info: DataInfo, seed: int) -> tuple[Tensor, Tensor]:
    """uint8 images (N, C, S, S) and int64 labels for N = num_train + num_test examples."""
    c, side, _ = info.input_shape
    k = info.num_classes
    n = info.num_train + info.num_test
    margin = max(1, side // 8)
    gen = order.generator(order.STREAM_SYNTHETIC, seed)
    low = torch.randn(k, c, _LOW_RES, _LOW_RES, generator=gen)
    prototypes = F.interpolate(low, size=(side + 2 * margin,) * 2, mode="bicubic", align_corners=False)
    prototypes = prototypes / prototypes.std(dim=(1, 2, 3), keepdim=True)
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=gen)]
    offsets = torch.randint(0, 2 * margin + 1, (n, 2), generator=gen)
    contrast = 0.6 + 0.8 * torch.rand(n, generator=gen)
    brightness = 0.3 * torch.randn(n, c, generator=gen)

    images = torch.empty(n, c, side, side, dtype=torch.uint8)
    ar = torch.arange(side)
    for chunk, lo in enumerate(range(0, n, _CHUNK)):
        hi = min(n, lo + _CHUNK)
        b = hi - lo
        cg = order.generator(order.STREAM_SYNTHETIC, seed, chunk + 1)
        rows = (offsets[lo:hi, 0, None] + ar)[:, None, :, None]
        cols = (offsets[lo:hi, 1, None] + ar)[:, None, None, :]
        shifted = prototypes[labels[lo:hi, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
        distractor = F.interpolate(torch.randn(b, c, _LOW_RES, _LOW_RES, generator=cg), size=(side, side), mode="bicubic", align_corners=False)
        x = contrast[lo:hi, None, None, None] * shifted + 1.5 * distractor + brightness[lo:hi, :, None, None]
        x = x + 0.5 * torch.randn(b, c, side, side, generator=cg)
        images[lo:hi] = torch.sigmoid(x).mul_(255.0).round_().to(torch.uint8)
    return images, labels


class SyntheticSource(DataSource):
    def open(self, device: torch.device, *, num_workers: int | None = None) -> DataBundle:
        info = synthetic_info(self.cfg)
        images, labels = generate(info, self.cfg.seed)
        ntr = info.num_train
        mean, std = channel_stats(images[:ntr])
        side = info.input_shape[1]
        return ResidentBundle(
            info,
            (images[:ntr], labels[:ntr]),
            (images[ntr:], labels[ntr:]),
            device,
            augmentation=standard_augmentation(side) if self.cfg.augment else None,
            mean=mean,
            std=std,
            train_side=partial(train_resolution, self.cfg) if progressive(self.cfg) else None,
        )
