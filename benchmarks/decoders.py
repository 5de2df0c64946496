"""CPU JPEG decoders side by side, the choice behind trainers/data/jpeg.py's CPU path: PIL
(Pillow's libjpeg-turbo) against torchvision.io.decode_jpeg (libjpeg-turbo too; deprecated since
torchvision 0.29), on generated ImageNet-like files (about 400 x 350, 93 kB), one thread, in
one process, rounds interleaved; the pixels must be equal (the check that both ran the same
decode), and the figure is the ratio of their rates. PIL gives (H, W, 3): the loader's
(3, H, W) is either a strided view of it or a copy, so both are timed.

    python -m benchmarks.decoders            # [--files 64] [--rounds 5]
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.imagenet_e2e import write_jpeg_folder


def pil_decode(data: bytes) -> torch.Tensor:
    """(3, H, W) as a strided view of PIL's (H, W, 3) array."""
    with Image.open(io.BytesIO(data)) as im:
        rgb = np.array(im if im.mode == "RGB" else im.convert("RGB"))
    return torch.from_numpy(rgb).permute(2, 0, 1)


def pil_decode_chw(data: bytes) -> torch.Tensor:
    """(3, H, W) contiguous, as torchvision's decoders return it."""
    return pil_decode(data).contiguous()


def torchvision_decode(data: bytes) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decoders", description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
    with tempfile.TemporaryDirectory() as tmp:
        write_jpeg_folder(tmp, train_files=a.files, val_files=0, classes=1)
        files = [p.read_bytes() for p in sorted(Path(tmp, "train").rglob("*.JPEG"))]
    for data in files:
        if not torch.equal(pil_decode(data), torchvision_decode(data)):
            print("decoders: PIL and torchvision decode a file to different pixels", file=sys.stderr)
            return 1
    decoders = {"pil": pil_decode, "pil, chw copy": pil_decode_chw, "torchvision.io": torchvision_decode}
    rates: dict[str, list[float]] = {k: [] for k in decoders}
    for _ in range(a.rounds):
        for name, fn in decoders.items():
            t0 = time.perf_counter()
            for data in files:
                fn(data)
            rates[name].append(len(files) / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{len(files)} files, {sum(map(len, files)) / len(files) / 1e3:.0f} kB mean, 1 thread, median of {a.rounds} rounds")
    for k, v in med.items():
        print(f"  {k:<15} {v:8.1f} images/s")
    for k in ("pil", "pil, chw copy"):
        print(f"  {k} / torchvision.io: {med[k] / med['torchvision.io']:.2f} (same pixels: checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
