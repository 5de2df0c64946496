"""The IDX family (Fashion-MNIST, MNIST, KMNIST, EMNIST-digits): small IDX files generated here
are read back exactly, gzip or not; counts from the headers; missing files say where to get
them. Nothing is downloaded and the system's Fashion-MNIST package is not needed."""
from __future__ import annotations

import gzip
import struct
from dataclasses import replace

import numpy as np
import pytest
import torch

from trainers.data import catalog
from trainers.data import sources as D
from trainers.data.idx_files import read_idx, write_idx
from trainers.jobs import DataConfig

CPU = torch.device("cpu")


def _make(folder, names, n_train=12, n_test=5, side=6, compress=(True, False, False, True), seed=0):
    """Random uint8 images and labels written as IDX; returns them as written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = [rng.integers(0, 256, (n_train, side, side), dtype=np.uint8), rng.integers(0, 10, n_train).astype(np.uint8),
              rng.integers(0, 256, (n_test, side, side), dtype=np.uint8), rng.integers(0, 10, n_test).astype(np.uint8)]
    for name, a, gz in zip(names, arrays, compress):
        write_idx(folder / (name + (".gz" if gz else "")), a, compress=gz)
    return arrays


def test_idx_header_written_by_hand_reads_back(tmp_path):
    # An independent writer (struct only) for the reader: type 0x0B (int16, big-endian), 2 dims.
    values = np.arange(-3, 3, dtype=np.int16).reshape(2, 3)
    raw = b"\x00\x00\x0b\x02" + struct.pack(">II", 2, 3) + b"".join(struct.pack(">h", v) for v in values.ravel())
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    for name in ("a", "a.gz"):
        got = read_idx(tmp_path / name)
        assert got.dtype == np.int16 and np.array_equal(got, values)


def test_fashion_files_read_back_exactly(tmp_path):
    names = catalog.IDX_LAYOUTS["fashion_mnist"].files
    tx, ty, vx, vy = _make(tmp_path, names)
    cfg = DataConfig(name="fashion_mnist", root=str(tmp_path))
    info = D.describe(cfg)
    assert info.input_shape == (1, 6, 6) and (info.num_train, info.num_test) == (12, 5)
    bundle = D.open_data(cfg, CPU)
    assert torch.equal(bundle.train_x, torch.from_numpy(tx)[:, None]) and torch.equal(bundle.train_y, torch.from_numpy(ty).long())
    assert torch.equal(bundle.test_x, torch.from_numpy(vx)[:, None]) and torch.equal(bundle.test_y, torch.from_numpy(vy).long())
    # Normalised by the training split's own statistics.
    x = torch.cat([b for b, _ in bundle.eval_batches("test", 5)])
    mean, std = tx.mean() / 255, tx.std() / 255
    expected = (torch.from_numpy(vx)[:, None].double() / 255 - mean) / std
    assert torch.allclose(x.double(), expected, atol=1e-5)  # float32 arithmetic on values of order 1


def test_emnist_is_transposed_and_subsets_are_drawn(tmp_path):
    names = catalog.IDX_LAYOUTS["emnist_digits"].files
    tx, ty, _, _ = _make(tmp_path, names, compress=(False,) * 4)
    bundle = D.open_data(DataConfig(name="emnist_digits", root=str(tmp_path), num_train=7), CPU)
    assert bundle.info.num_train == 7
    full = torch.from_numpy(tx.transpose(0, 2, 1).copy())[:, None]
    rows = [next(i for i in range(12) if torch.equal(full[i], img)) for img in bundle.train_x]
    assert len(set(rows)) == 7 and torch.equal(bundle.train_y, torch.from_numpy(ty).long()[rows])


def test_default_folder_and_missing_files_say_where(tmp_path, monkeypatch):
    layout = catalog.IDX_LAYOUTS["fashion_mnist"]
    monkeypatch.setitem(catalog.IDX_LAYOUTS, "fashion_mnist", replace(layout, default_root=str(tmp_path / "sys")))
    with pytest.raises(FileNotFoundError, match="default folder.*apt-get install dataset-fashion-mnist"):
        D.check_available(DataConfig(name="fashion_mnist"))
    # The planner sizes the job without the files.
    assert D.describe(DataConfig(name="fashion_mnist")).num_train == 60_000
    _make(tmp_path / "sys", layout.files[:3])
    with pytest.raises(FileNotFoundError, match=r"lacks t10k-labels-idx1-ubyte\[\.gz\]"):
        D.check_available(DataConfig(name="fashion_mnist"))
    _make(tmp_path / "sys", layout.files)
    D.check_available(DataConfig(name="fashion_mnist"))
    assert D.open_data(DataConfig(name="fashion_mnist"), CPU).info.num_train == 12
    with pytest.raises(ValueError, match="data.root must be set.*yann.lecun.com"):
        D.check_available(DataConfig(name="mnist"))


def test_damaged_idx_files_are_named(tmp_path):
    names = catalog.IDX_LAYOUTS["mnist"].files
    _make(tmp_path, names, compress=(False,) * 4)
    cfg = DataConfig(name="mnist", root=str(tmp_path))
    (tmp_path / names[0]).write_bytes(b"\x00\x00\x08\x03" + struct.pack(">III", 12, 6, 6) + b"\x00" * 10)
    with pytest.raises(ValueError, match=f"{names[0]}: IDX header says"):
        D.open_data(cfg, CPU)
    (tmp_path / names[0]).write_bytes(b"PK\x03\x04junk")
    with pytest.raises(ValueError, match=f"{names[0]}: not an IDX file"):
        D.describe(cfg)
    _make(tmp_path, names, n_test=4, compress=(False,) * 4)
    write_idx(tmp_path / names[3], np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="expected 4 labels"):
        D.open_data(cfg, CPU)
