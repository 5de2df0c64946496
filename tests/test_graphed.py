"""The CUDA-graph step's CPU-checkable parts: the warm-up is undone exactly, and the switch is
refused where there is no CUDA (the captured path itself is in the GPU suite, tests/test_gpu.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainers.graphed import _restore, _snapshot, make_step
from trainers.jobs import DataConfig, TrainConfig, TrainJob, TrainPaths
from trainers.models import build_model
from trainers.pruning import MaskApplier, full_mask
from trainers.runtime import Runtime
from trainers.train import train


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_warmup_steps_are_undone_exactly(name):
    """Capture runs warm-up steps that update weights, BatchNorm statistics and optimizer state;
    after _restore the next step must be bitwise the step a fresh run takes (a zero momentum
    buffer or Adam moment with step 0 updates exactly as a missing one)."""
    def fresh():
        torch.manual_seed(0)
        model = build_model("cifar_resnet_20", (3, 8, 8), 4, seed=0)
        opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=True) if name == "sgd"
               else torch.optim.Adam(model.parameters(), lr=1e-2, foreach=True))
        return model, opt

    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 4, (8,), generator=gen)

    def one_step(model, opt):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    ref_model, ref_opt = fresh()
    one_step(ref_model, ref_opt)
    model, opt = fresh()
    saved = _snapshot(model, opt)
    for _ in range(3):
        one_step(model, opt)
    _restore(model, opt, saved)
    one_step(model, opt)
    ref, got = ref_model.state_dict(), model.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_cuda_graphs_need_a_cuda_device(tmp_path):
    cfg = TrainConfig(model="mlp_300_100", data=DataConfig(name="digits"), iterations=2, batch_size=16, cuda_graphs=True)
    with pytest.raises(ValueError, match="train.cuda_graphs"):
        train(TrainJob(train=cfg, init_seed=0, data_seed=0), TrainPaths(out_dir=str(tmp_path)), Runtime(device=torch.device("cpu")))
    model = build_model("mlp_300_100", (64,), 10, seed=0)
    eager = make_step(model, F.cross_entropy, model, torch.optim.SGD(model.parameters(), lr=0.1), MaskApplier(model, full_mask(model)),
                      torch.device("cpu"), "fp32", cuda_graphs=False)
    eager(torch.randn(4, 64), torch.tensor([0, 1, 2, 3]), 0.1)


@pytest.mark.parametrize("data, compile, field", [
    (DataConfig(name="imagenet", root="/nonexistent", image_size=32), False, "train.cuda_graphs"),
    (DataConfig(name="digits"), True, "train.compile"),
])
def test_the_trainer_refuses_what_a_graph_cannot_capture(tmp_path, data, compile, field):
    """The same refusals as the spec (trainers/graph_rules.py), for a job that reaches the trainer
    another way: before any data is opened or any file written, on any device."""
    cfg = TrainConfig(model="mlp_300_100", data=data, iterations=2, batch_size=16, cuda_graphs=True, compile=compile)
    with pytest.raises(ValueError, match=f"^{field}: "):
        train(TrainJob(train=cfg, init_seed=0, data_seed=0), TrainPaths(out_dir=str(tmp_path / "out")), Runtime(device=torch.device("cpu")))
    assert not (tmp_path / "out").exists()
