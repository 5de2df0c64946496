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


def test_deterministic_kernels_do_not_fill_new_tensors_and_restore_the_fill():
    """use_deterministic_algorithms(True) turns on fill_uninitialized_memory (NaN into every
    torch.empty); inside `kernels` it is off, and the process's own setting comes back after."""
    import torch.utils.deterministic as tud

    before = tud.fill_uninitialized_memory
    try:
        tud.fill_uninitialized_memory = True
        with kernels(True, torch.device("cpu")):
            assert torch.are_deterministic_algorithms_enabled() and tud.fill_uninitialized_memory is False
        assert tud.fill_uninitialized_memory is True
    finally:
        tud.fill_uninitialized_memory = before


@pytest.mark.parametrize("packed", [False, True])
def test_results_are_the_same_bits_with_and_without_the_fill(tmp_path, monkeypatch, packed):
    """Nothing reads memory before writing it: training with the fill (PyTorch's default under
    deterministic algorithms) and without it (ours) ends in the same bits, one job and a stacked
    pack alike (the pack's stacking, slicing and optimizer state are where empty tensors are made)."""
    from trainers import determinism
    from trainers.packed import train_packed

    cfg = dataclasses.replace(CFG, model="cifar_resnet_20", data=DataConfig(name="synthetic", image_size=8, num_classes=4,
                              num_train=64, num_test=16), iterations=3, eval_every=2, eval_train_examples=16)
    jobs = [TrainJob(train=cfg, init_seed=s, data_seed=s) for s in range(2 if packed else 1)]

    def run(tag: str) -> list[dict]:
        paths = [TrainPaths(out_dir=str(tmp_path / f"{tag}{i}")) for i in range(len(jobs))]
        rt = Runtime(device=torch.device("cpu"))
        results = train_packed(jobs, paths, rt, strategy="stacked") if packed else [train(jobs[0], paths[0], rt)]
        return [torch.load(r.weights_path, weights_only=True) for r in results]

    without = run("off")
    monkeypatch.setattr(determinism, "FILL_UNINITIALIZED", True)
    with_fill = run("on")
    for a, b in zip(without, with_fill):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
