"""CIFAR-10 / CIFAR-100 batch files (torchvision's on-disk format, the python pickles) read into
numpy, validated, with errors that name the file. No torch: ondisk.py counts a data set's
examples with this when `lth plan` describes a CIFAR folder; cifar.py loads the same arrays.

torchvision.datasets.CIFAR10(download=False) refuses any file whose md5 differs from the
official archive's, which rules out the files export.py writes for tests and benchmarks, so
the pickles are read here directly: same files, same keys ("data": uint8 N x 3072 in CHW
order, "labels" / "fine_labels").

A pickle can name any callable to run while it loads, and `lth plan` reads these files from
whatever directory a config's data.root names. So they are read by an unpickler that builds
only what a batch file holds (dicts, lists, strings, numbers and numpy arrays): a file that
names anything else is refused as not a CIFAR batch file, before that thing is imported.
"""
from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np

from trainers.data.catalog import CIFAR_SHAPE, CifarLayout


# (module, name) -> the object: all a batch file's pickle may name. The official files were
# written by Python 2 with numpy.core; numpy 2 calls it numpy._core; Python 3's protocol 2
# pickles of bytes go through _codecs.encode.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch file never holds "
                                         "(refused, not imported)") from None


def _get(entry: dict, key: str, path: Path):
    # Real CIFAR pickles are Python 2 pickles: read with latin1 they have str keys, with
    # encoding="bytes" bytes keys; accept both.
    for k in (key, key.encode()):
        if k in entry:
            return entry[k]
    raise ValueError(f"{path}: not a CIFAR batch file (no {key!r} entry; keys: {sorted(map(str, entry))})")


def read_batch(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, 3, 32, 32), int64 labels (N,)) of one batch file."""
    try:
        with open(path, "rb") as f:
            entry = _BatchUnpickler(f, encoding="latin1").load()
    except OSError:
        raise  # the disk's error, as it is (a missing or unreadable file is not a damaged one)
    except Exception as e:  # a damaged or foreign file makes pickle raise almost anything
        raise ValueError(f"{path}: unreadable CIFAR batch file ({type(e).__name__}: {e})") from e
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: not a CIFAR batch file (a {type(entry).__name__}, not a dict)")
    data = np.asarray(_get(entry, "data", path))
    try:
        labels = np.asarray(_get(entry, layout.label_key, path), dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: labels are not integers ({e})") from e
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1 or len(labels) != len(data):
        raise ValueError(f"{path}: expected uint8 data of shape (N, 3072) and N labels, got {data.dtype} {data.shape} and {labels.shape} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise ValueError(f"{path}: labels outside 0..{layout.num_classes - 1}")
    return data.reshape(-1, *CIFAR_SHAPE), labels


def read_batches(folder: Path, files: tuple[str, ...], layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    parts = [read_batch(folder / name, layout) for name in files]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])
