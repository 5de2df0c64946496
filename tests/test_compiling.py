"""torch.compile switch: `auto` resolves per model from one table (the job id sees a bool), an
explicit value wins, the Inductor cache goes to node-local disk, the first step is timed."""
from __future__ import annotations

import copy
import os

import pytest
import torch

from orchestrator.spec import SpecError, load_spec
from trainers import compiling
from tests.test_spec import BASE, write


def test_auto_follows_the_table_and_explicit_values_win(tmp_path, monkeypatch):
    spec = copy.deepcopy(BASE)
    assert load_spec(write(tmp_path, spec)).train_config().compile is False  # pending measurement: eager
    monkeypatch.setitem(compiling.COMPILE_BY_DEFAULT, "mlp_300_100", True)
    assert load_spec(write(tmp_path, spec)).train_config().compile is True
    spec["train"]["compile"] = False
    assert load_spec(write(tmp_path, spec)).train_config().compile is False
    spec["train"]["compile"] = "sometimes"
    with pytest.raises(SpecError, match="train.compile"):
        load_spec(write(tmp_path, spec))


def test_inductor_cache_on_node_local_disk(tmp_path, monkeypatch):
    monkeypatch.delenv(compiling.CACHE_ENV, raising=False)
    monkeypatch.setenv(compiling.DATA_CACHE_ENV, str(tmp_path / "node"))
    assert compiling.inductor_cache_dir() == str(tmp_path / "node" / "torchinductor")
    monkeypatch.delenv(compiling.DATA_CACHE_ENV)
    assert compiling.inductor_cache_dir().startswith("/tmp/torchinductor-lth-")
    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path / "mine"))
    assert compiling.inductor_cache_dir() == str(tmp_path / "mine")


def test_compiled_sets_the_cache_and_times_the_first_step(tmp_path, monkeypatch):
    monkeypatch.setenv(compiling.CACHE_ENV, "")  # recorded, so the variable compiled() sets is undone
    monkeypatch.delenv(compiling.CACHE_ENV)
    monkeypatch.setenv(compiling.DATA_CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(torch, "compile", lambda m: m)  # the wrapper, not Inductor, is under test
    logs = []
    model = torch.nn.Linear(3, 2)
    fwd = compiling.compiled(model, log=logs.append)
    assert os.environ[compiling.CACHE_ENV] == str(tmp_path / "torchinductor") and (tmp_path / "torchinductor").is_dir()
    x = torch.ones(1, 3)
    assert torch.equal(fwd(x), model(x)) and fwd.first_step_seconds is None
    fwd(x)
    assert fwd.first_step_seconds is not None and fwd.first_step_seconds >= 0
    assert len(logs) == 1 and "first step took" in logs[0] and str(tmp_path) in logs[0]
    fwd(x)
    assert len(logs) == 1
