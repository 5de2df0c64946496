"""Decoding a batch of encoded image files on the training device.

Colour JPEGs (three components: what nearly all of ImageNet is) are decoded together by
`torchvision.io.decode_jpeg(list, device=...)`: nvJPEG on CUDA, libjpeg-turbo on the CPU, the
same call either way. Everything else goes to the CPU decoders and is then copied to the device:
greyscale and CMYK JPEGs (nvJPEG's colour conversion is not relied on for them), PNG or GIF
files under a .JPEG name (ImageNet holds some), and any file the batched decode rejects (the
batch is retried one file at a time, so one bad file costs only itself). A file no decoder
reads (truncated, corrupt) is reported by name and replaced by a mean-colour image (zero after
normalisation) with its label: a 100-hour job is never lost to one file, and the stream keeps
its length and order. `DecodeStats` counts each path, so a benchmark can tell whether it ran
the path it asked for.
"""
from __future__ import annotations

import io
import sys
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

_SOF = {0xC0, 0xC1, 0xC2}  # baseline, extended and progressive Huffman JPEGs (what decoders take)
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # markers without a length field
PLACEHOLDER_SIDE = 8


def jpeg_components(data: bytes | memoryview) -> int | None:
    """The number of colour components of a JPEG from its frame header (3: YCbCr or RGB, 1: grey,
    4: CMYK/YCCK), or None when the bytes are not a JPEG of a kind the batched decoders take."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker in _SOF:
            return data[pos + 9] if pos + 9 < n else None
        if 0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return None  # lossless / arithmetic-coded frames: the CPU path decides
        pos += 2 + length
    return None


@dataclass
class DecodeStats:
    """How the files of a bundle were decoded (counts of files); thread-safe."""

    device: str
    batched: int = 0  # colour JPEGs decoded in the device's batched call
    single: int = 0  # colour JPEGs the batched call rejected, decoded alone on the device
    cpu: int = 0  # decoded on the CPU (grey, CMYK, PNG-as-JPEG, ...), then copied to the device
    failed: int = 0  # unreadable: replaced by a mean-colour image
    failed_files: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def fail(self, path: str, reason: str) -> None:
        with self._lock:
            self.failed += 1
            first = path not in self.failed_files
            if first:
                self.failed_files.append(path)
        if first:  # once per file, not once per epoch
            print(f"lth data: cannot decode {path} ({reason}); using a mean-colour image in its place", file=sys.stderr, flush=True)

    def as_dict(self) -> dict:
        with self._lock:
            return {"device": self.device, "batched": self.batched, "single": self.single, "cpu": self.cpu,
                    "failed": self.failed, "failed_files": list(self.failed_files)}


def _to_tensor(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _placeholder(mean_rgb: tuple[float, float, float], device: torch.device) -> Tensor:
    colour = torch.tensor([round(255 * m) for m in mean_rgb], dtype=torch.uint8, device=device)
    return colour.view(3, 1, 1).expand(3, PLACEHOLDER_SIDE, PLACEHOLDER_SIDE).contiguous()


def _to_device(image: Tensor, device: torch.device) -> Tensor:
    """A CPU-decoded image on the device: staged in pinned memory on CUDA, so the copy is an
    asynchronous DMA on the producer's stream (which the producer waits for before handing the
    batch on) rather than a synchronous copy from pageable memory."""
    if device.type != "cuda":
        return image
    return image.pin_memory().to(device, non_blocking=True)


def decode_on_cpu(data: bytes) -> Tensor:
    """RGB uint8 (3, H, W) from any image file torchvision or PIL reads; raises when none does."""
    try:
        return decode_image(_to_tensor(data), mode=ImageReadMode.RGB)
    except RuntimeError:
        pass  # torchvision lacks some formats PIL has (e.g. old TIFF/BMP variants)
    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()


def decode_batch(files: list[bytes | OSError], paths: list[str], device: torch.device, stats: DecodeStats,
                 mean_rgb: tuple[float, float, float]) -> list[Tensor]:
    """RGB uint8 images (3, H_i, W_i) on `device`, one per file, in order. Never raises for a bad
    file (nor for one that could not be read: its OSError): see the module docstring."""
    out: list[Tensor | None] = [None] * len(files)
    for i, data in enumerate(files):
        if isinstance(data, OSError):
            stats.fail(paths[i], f"cannot read: {data.strerror or data}")
            out[i] = _placeholder(mean_rgb, device)
    colour = [i for i, data in enumerate(files) if out[i] is None and jpeg_components(memoryview(data)) == 3]
    if colour:
        tensors = [_to_tensor(files[i]) for i in colour]
        try:
            decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
            for i, img in zip(colour, decoded):
                out[i] = img
            stats.add(batched=len(colour))
        except RuntimeError:
            for i, t in zip(colour, tensors):
                try:
                    out[i] = decode_jpeg(t, mode=ImageReadMode.RGB, device=device)
                    stats.add(single=1)
                except RuntimeError:
                    pass  # left to the CPU decoders below
    for i, data in enumerate(files):
        if out[i] is not None:
            continue
        try:
            out[i] = _to_device(decode_on_cpu(data), device)
            stats.add(cpu=1)
        except Exception as e:  # noqa: BLE001 - any decoder error of one file must not end the job
            stats.fail(paths[i], f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'unreadable'}")
            out[i] = _placeholder(mean_rgb, device)
    return out  # type: ignore[return-value]
