"""train.deterministic: the kernel settings a job runs under, what its result records, the config."""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from trainers.determinism import CUBLAS_ENV, kernels
from trainers.jobs import DataConfig, TrainConfig, TrainJob, TrainPaths
from trainers.runtime import Runtime
from trainers.train import train

CFG = TrainConfig(model="mlp_300_100", data=DataConfig(name="digits"), iterations=4, batch_size=16, eval_train_examples=32)


def test_runtime_sets_the_cublas_workspace_before_cuda():
    Runtime(device=torch.device("cpu"))
    assert os.environ[CUBLAS_ENV] in (":4096:8", ":16:8")


@pytest.mark.parametrize("deterministic", [True, False])
def test_a_job_trains_under_its_kernel_settings_and_restores_the_process(tmp_path, deterministic):
    seen = []

    def during(row):  # called from inside the loop: the settings the steps ran under
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                     torch.backends.cudnn.benchmark))

    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    job = TrainJob(train=dataclasses.replace(CFG, deterministic=deterministic), init_seed=0, data_seed=0)
    result = train(job, TrainPaths(out_dir=str(tmp_path)), Runtime(device=torch.device("cpu"), on_metric=during))
    assert seen and set(seen) == {(deterministic, deterministic, not deterministic)}
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark) == before
    assert result.deterministic is True  # a CPU's kernels are deterministic either way


def test_cpu_runs_are_bitwise_equal_with_and_without_the_flag(tmp_path):
    rt = Runtime(device=torch.device("cpu"))
    a = train(TrainJob(train=CFG, init_seed=0, data_seed=0), TrainPaths(out_dir=str(tmp_path / "a")), rt)
    b = train(TrainJob(train=dataclasses.replace(CFG, deterministic=False), init_seed=0, data_seed=0),
              TrainPaths(out_dir=str(tmp_path / "b")), rt)
    wa, wb = torch.load(a.weights_path, weights_only=True), torch.load(b.weights_path, weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_deterministic_cuda_refuses_a_missing_cublas_workspace(monkeypatch):
    monkeypatch.setenv(CUBLAS_ENV, ":0:0")
    with pytest.raises(RuntimeError, match="CUBLAS_WORKSPACE_CONFIG"):
        with kernels(True, torch.device("cuda")):
            pass
    with kernels(False, torch.device("cuda")):  # a non-deterministic job does not need it
        pass


def test_spec_validates_and_passes_the_flag(tmp_path):
    from orchestrator.spec import SpecError, validate_spec

    base = {"name": "t", "model": "mlp_300_100", "data": {"name": "digits"}, "train": {"iterations": 10},
            "sweep": {"rewind_iters": [0], "replicates": 1}}
    assert validate_spec(base).train_config().deterministic is True
    off = validate_spec({**base, "train": {"iterations": 10, "deterministic": False}})
    assert off.train_config().deterministic is False
    with pytest.raises(SpecError, match="train.deterministic"):
        validate_spec({**base, "train": {"iterations": 10, "deterministic": "sometimes"}})
