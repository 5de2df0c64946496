"""IDX files (the format of MNIST, Fashion-MNIST, KMNIST and EMNIST), read into numpy with
errors that name the file. No torch: ondisk.py reads a folder's headers with this when
`lth plan` describes it; idx.py loads the same arrays.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values in C order, big-endian.
Files may be gzip-compressed (recognised by gzip's own magic bytes, not by the name).
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

# type code -> numpy dtype (big-endian as stored)
IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_GZIP_MAGIC = b"\x1f\x8b"


def _open(path: Path):
    with open(path, "rb") as f:
        head = f.read(2)
    return gzip.open(path, "rb") if head == _GZIP_MAGIC else open(path, "rb")


def _header(f, path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    magic = f.read(4)
    if len(magic) < 4 or magic[:2] != b"\x00\x00" or magic[2] not in IDX_TYPES or magic[3] < 1:
        raise ValueError(f"{path}: not an IDX file (magic bytes {magic.hex() or 'missing'})")
    ndim = magic[3]
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise ValueError(f"{path}: IDX header cut short ({ndim} dimensions announced)")
    return IDX_TYPES[magic[2]], struct.unpack(f">{ndim}I", raw)


def read_shape(path: Path) -> tuple[int, ...]:
    """The array's shape from the header alone (cheap, also for a gzip file)."""
    try:
        with _open(path) as f:
            return _header(f, path)[1]
    except (OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: unreadable IDX file ({type(e).__name__}: {e})") from e


def read_idx(path: Path) -> np.ndarray:
    """The whole array, in native byte order."""
    try:
        with _open(path) as f:
            dtype, shape = _header(f, path)
            body = f.read()
    except (OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: unreadable IDX file ({type(e).__name__}: {e})") from e
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(body) != expected:
        raise ValueError(f"{path}: IDX header says {shape} of {dtype} ({expected} bytes), the file holds {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write an IDX file (tests and small exports); uint8 / int8 / int16 / int32 / float32 / float64."""
    code = next((k for k, v in IDX_TYPES.items() if v.newbyteorder("=") == array.dtype.newbyteorder("=")), None)
    if code is None:
        raise ValueError(f"IDX cannot hold {array.dtype}")
    big = IDX_TYPES[code]
    data = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += np.ascontiguousarray(array, dtype=big).tobytes()
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)


def read_split(images: Path, labels: Path, num_classes: int, transpose: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, 1, H, W), int64 labels (N,)) of one split, checked against each other."""
    x = read_idx(images)
    y = read_idx(labels)
    if x.dtype != np.uint8 or x.ndim != 3:
        raise ValueError(f"{images}: expected uint8 images of shape (N, H, W), got {x.dtype} {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{labels}: expected {len(x)} labels (one per image in {images.name}), got shape {y.shape}")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{labels}: labels outside 0..{num_classes - 1}")
    if transpose:  # EMNIST stores each image transposed relative to MNIST
        x = x.transpose(0, 2, 1)
    return np.ascontiguousarray(x[:, None]), y
