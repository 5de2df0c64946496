"""Artifact files: permissions follow the umask on every write path."""
from __future__ import annotations

import os

import pytest
import torch

from orchestrator.store import Store
from trainers import checkpoint


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_artifacts_honour_the_umask(tmp_path, umask):
    # mkstemp made every artifact 0600 whatever the umask; a shared store then hid the tickets.
    old = os.umask(umask)
    try:
        checkpoint.save({"w": torch.zeros(2)}, tmp_path / "job" / "weights.pt")
        checkpoint.save_json({"a": 1}, tmp_path / "job" / "result.json")
        store = Store(str(tmp_path / "store"))
        store.write_bytes("artifacts/x/done.json", b"{}")
        store.download("artifacts/x/done.json", str(tmp_path / "local" / "done.json"))
    finally:
        os.umask(old)
    files = [tmp_path / "job" / "weights.pt", tmp_path / "job" / "result.json",
             tmp_path / "store" / "artifacts" / "x" / "done.json", tmp_path / "local" / "done.json"]
    assert {f.name: f.stat().st_mode & 0o777 for f in files} == {f.name: 0o666 & ~umask for f in files}
    assert not [p for p in tmp_path.rglob(".*")]  # no temporaries left behind
