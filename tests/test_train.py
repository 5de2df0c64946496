"""The training loop: determinism, resume, rewinding, pruning, retrain modes, bad input."""
from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch

from trainers import checkpoint
from trainers.api import run_train_job
from trainers.jobs import DataConfig, OptimizerConfig, PruneConfig, ScheduleConfig, TrainConfig, TrainJob, TrainPaths
from trainers.models import build_model
from trainers.pruning import prunable_names
from trainers.runtime import Runtime
from trainers.train import fingerprint, starting_point

torch.set_num_threads(1)

CFG = TrainConfig(
    model="mlp_300_100",
    data=DataConfig(name="digits"),
    iterations=60,
    batch_size=32,
    optimizer=OptimizerConfig(lr=0.05, momentum=0.9, weight_decay=1e-4),
    schedule=ScheduleConfig(name="step", milestones=(30,), gamma=0.1),
    eval_every=20,
    eval_train_examples=256,
)
RT = Runtime(device=torch.device("cpu"))


def run(job: TrainJob, out, **paths):
    return run_train_job(job, TrainPaths(out_dir=str(out), **paths), RT)


def weights(path) -> dict[str, torch.Tensor]:
    return checkpoint.load_weights(path)


def assert_bitwise(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_same_job_twice_is_bitwise_identical(tmp_path):
    job = TrainJob(train=CFG, init_seed=1, data_seed=3)
    r1, r2 = run(job, tmp_path / "a"), run(job, tmp_path / "b")
    assert_bitwise(weights(r1.weights_path), weights(r2.weights_path))
    assert [dataclasses.astuple(m) for m in r1.metrics] == [dataclasses.astuple(m) for m in r2.metrics]
    other = weights(run(dataclasses.replace(job, data_seed=4), tmp_path / "c").weights_path)
    assert any(not torch.equal(other[k], v) for k, v in weights(r1.weights_path).items())
    # The network learned something: digits are easy.
    assert r1.test_accuracy > 0.8


def test_resume_after_interruption_is_bitwise_identical(tmp_path):
    job = TrainJob(train=CFG, init_seed=2, data_seed=5)
    reference = run(job, tmp_path / "ref")

    class Interrupt(Exception):
        pass

    def crash_at_40(row):
        if row.iteration == 40:
            raise Interrupt

    out = tmp_path / "crash"
    paths = TrainPaths(out_dir=str(out), checkpoint_every_iters=7)
    with pytest.raises(Interrupt):
        run_train_job(job, paths, Runtime(device=torch.device("cpu"), on_metric=crash_at_40))
    assert os.path.exists(out / "checkpoint.pt")
    assert checkpoint.load_resumable(out / "checkpoint.pt", fingerprint(job))["iteration"] == 35
    resumed = run_train_job(job, paths, RT)
    assert resumed.resumed_from == 35
    assert_bitwise(weights(resumed.weights_path), weights(reference.weights_path))
    assert [dataclasses.astuple(m) for m in resumed.metrics] == [dataclasses.astuple(m) for m in reference.metrics]
    assert not os.path.exists(out / "checkpoint.pt")  # superseded by the result


def test_saved_rewind_point_equals_a_run_stopped_there(tmp_path):
    dense = run(TrainJob(train=CFG, init_seed=0, data_seed=1, save_iters=(0, 20)), tmp_path / "dense")
    stopped = run(TrainJob(train=CFG, init_seed=0, data_seed=1, end_iter=20), tmp_path / "stopped")
    assert_bitwise(weights(dense.saved_weights[20]), weights(stopped.weights_path))
    w0 = checkpoint.state_dict_cpu(build_model("mlp_300_100", (64,), 10, seed=0))
    assert_bitwise(weights(dense.saved_weights[0]), w0)


def test_level_from_w_k_continues_schedule_and_data_order(tmp_path):
    """Plain SGD has no optimizer state, so training k -> T from W_k with the full mask must
    reproduce the dense run exactly: only true if the LR schedule and the data stream are
    positioned at k, not restarted."""
    cfg = dataclasses.replace(CFG, optimizer=OptimizerConfig(lr=0.05, momentum=0.0, weight_decay=0.0))
    dense = run(TrainJob(train=cfg, init_seed=0, data_seed=1, save_iters=(40,)), tmp_path / "dense")
    child = run(
        TrainJob(train=cfg, init_seed=0, data_seed=1, start_iter=40),
        tmp_path / "child",
        rewind_weights=dense.saved_weights[40],
        parent_mask=dense.mask_path,
    )
    assert_bitwise(weights(child.weights_path), weights(dense.weights_path))


def test_level_sees_the_learning_rate_the_schedule_has_at_k(tmp_path):
    seen: list[float] = []
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"])
    )
    try:
        dense = run(TrainJob(train=CFG, init_seed=0, data_seed=1, save_iters=(45,)), tmp_path / "dense")
        seen.clear()
        job = TrainJob(train=CFG, init_seed=0, data_seed=1, start_iter=45, prune=PruneConfig(fraction=0.5))
        run(job, tmp_path / "l1", parent_weights=dense.weights_path, parent_mask=dense.mask_path,
            rewind_weights=dense.saved_weights[45])
        assert seen[0] == pytest.approx(0.05 * 0.1)  # milestone 30 passed: lr * gamma
        assert len(seen) == 60 - 45
        seen.clear()
        ft = dataclasses.replace(job, retrain="finetune", finetune_lr=0.003)
        run(ft, tmp_path / "ft", parent_weights=dense.weights_path, parent_mask=dense.mask_path)
        assert set(seen) == {0.003}
    finally:
        handle.remove()


def test_pruned_level_density_and_exact_zeros(tmp_path):
    dense = run(TrainJob(train=CFG, init_seed=0, data_seed=1, save_iters=(10,)), tmp_path / "dense")
    parent_w, parent_m = dense.weights_path, dense.mask_path
    remaining = total = sum(v.numel() for v in checkpoint.load_mask(parent_m).values())
    for level in (1, 2):
        job = TrainJob(train=CFG, init_seed=0, data_seed=1, start_iter=10, prune=PruneConfig(fraction=0.2))
        res = run(job, tmp_path / f"l{level}", parent_weights=parent_w, parent_mask=parent_m,
                  rewind_weights=dense.saved_weights[10])
        remaining -= math.ceil(0.2 * remaining)
        assert res.density == pytest.approx(remaining / total)
        mask, w = checkpoint.load_mask(res.mask_path), weights(res.weights_path)
        for name, m in mask.items():
            assert torch.count_nonzero(w[name][~m]) == 0, name  # momentum + weight decay revived nothing
        parent_w, parent_m = res.weights_path, res.mask_path


def test_retrain_modes_start_from_the_right_weights(tmp_path):
    dense = run(TrainJob(train=CFG, init_seed=0, data_seed=1, save_iters=(10,)), tmp_path / "dense")
    paths = TrainPaths(out_dir=str(tmp_path / "x"), parent_weights=dense.weights_path,
                       parent_mask=dense.mask_path, rewind_weights=dense.saved_weights[10])
    base = TrainJob(train=CFG, init_seed=0, data_seed=1, start_iter=10, prune=PruneConfig(fraction=0.5))
    model = build_model("mlp_300_100", (64,), 10, seed=0)
    from trainers.data.ondisk import describe
    info = describe(CFG.data)
    w_k, final = weights(dense.saved_weights[10]), weights(dense.weights_path)
    for retrain, reinit, expected in [
        ("rewind", None, w_k),
        ("lr_rewind", None, final),
        ("finetune", None, final),
        ("rewind", 99, checkpoint.state_dict_cpu(build_model("mlp_300_100", (64,), 10, seed=99))),
    ]:
        w, mask = starting_point(dataclasses.replace(base, retrain=retrain, reinit_seed=reinit), paths, model, info)
        assert_bitwise(w, expected)
        assert sum(int(m.sum()) for m in mask.values()) == sum(m.numel() for m in mask.values()) // 2
    # Every mode prunes the parent's final weights by magnitude, whatever it rewinds to.
    names = prunable_names(model, ())
    kept = torch.cat([final[n][mask[n]].abs() for n in names])
    dropped = torch.cat([final[n][~mask[n]].abs() for n in names])
    assert kept.min() >= dropped.max()


def test_bad_input_is_refused_with_a_clear_message(tmp_path):
    with pytest.raises(ValueError, match="save_iters"):
        run(TrainJob(train=CFG, init_seed=0, data_seed=0, save_iters=(61,)), tmp_path / "a")
    with pytest.raises(ValueError, match="fraction"):
        run(TrainJob(train=CFG, init_seed=0, data_seed=0, start_iter=0, prune=PruneConfig(fraction=1.5)),
            tmp_path / "b", parent_weights="x", parent_mask="y")
    with pytest.raises(ValueError, match="mlp_300_100"):  # the message lists the valid names
        run(TrainJob(train=dataclasses.replace(CFG, model="nope"), init_seed=0, data_seed=0), tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="missing_weights.pt"):
        run(TrainJob(train=CFG, init_seed=0, data_seed=0, start_iter=5), tmp_path / "d",
            rewind_weights=str(tmp_path / "missing_weights.pt"))
    # A corrupt checkpoint is reported and left exactly as it was.
    out = tmp_path / "e"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint.pt"):
        run(TrainJob(train=CFG, init_seed=0, data_seed=0), out)
    assert (out / "checkpoint.pt").read_bytes() == b"not a checkpoint"
    assert not (out / "weights.pt").exists()


def test_a_new_rewinding_point_is_added_without_touching_what_is_stored(tmp_path):
    out = tmp_path / "dense"
    first = run(TrainJob(train=CFG, init_seed=0, data_seed=1, save_iters=(0,)), out)
    before = (out / "weights.pt").read_bytes()
    grown = run(TrainJob(train=CFG, init_seed=0, data_seed=1, save_iters=(0, 25)), out)
    assert (out / "weights.pt").read_bytes() == before
    assert set(grown.saved_weights) == {0, 25}
    stopped = run(TrainJob(train=CFG, init_seed=0, data_seed=1, end_iter=25), tmp_path / "stopped")
    assert_bitwise(weights(grown.saved_weights[25]), weights(stopped.weights_path))
    assert first.test_accuracy == grown.test_accuracy


def _pt_bytes(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix == ".pt"}


def test_adding_k0_to_a_finished_dense_run_equals_planning_it_from_the_start(tmp_path):
    """The sweep grew k = 0 after its dense run saved only k > 0: W_0 is the initialisation,
    with no iteration to replay (a replay to iteration 0 was refused: start 0, end 0)."""
    grown_dir, full_dir = tmp_path / "grown", tmp_path / "full"
    run(TrainJob(train=CFG, init_seed=0, data_seed=1, save_iters=(25,)), grown_dir)
    grown = run(TrainJob(train=CFG, init_seed=0, data_seed=1, save_iters=(0, 25)), grown_dir)
    full = run(TrainJob(train=CFG, init_seed=0, data_seed=1, save_iters=(0, 25)), full_dir)
    assert set(grown.saved_weights) == {0, 25}
    assert _pt_bytes(grown_dir) == _pt_bytes(full_dir)  # weights.pt, mask.pt, w_0.pt, w_25.pt


def test_a_rewinding_point_added_while_the_dense_run_is_interrupted(tmp_path):
    """The sweep grew k = 5 (before the checkpoint) and k = 50 (after it) while its dense run
    was interrupted at iteration 40: the run resumes its own checkpoint (save_iters is not part
    of its fingerprint, as it is not part of its id), saves W_50 on the way and replays W_5."""

    class Interrupt(Exception):
        pass

    def crash_at_40(row):
        if row.iteration == 40:
            raise Interrupt

    out, full_dir = tmp_path / "interrupted", tmp_path / "full"
    paths = TrainPaths(out_dir=str(out), checkpoint_every_iters=7)
    first = TrainJob(train=CFG, init_seed=2, data_seed=5, save_iters=(25,))
    with pytest.raises(Interrupt):
        run_train_job(first, paths, Runtime(device=torch.device("cpu"), on_metric=crash_at_40))
    grown = dataclasses.replace(first, save_iters=(5, 25, 50))
    resumed = run_train_job(grown, paths, RT)
    assert resumed.resumed_from == 35
    full = run(grown, full_dir)
    assert set(resumed.saved_weights) == {5, 25, 50}
    assert _pt_bytes(out) == _pt_bytes(full_dir)
    assert [dataclasses.astuple(m) for m in resumed.metrics] == [dataclasses.astuple(m) for m in full.metrics]
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no replay directory left behind


def test_a_diverged_job_stops_at_its_first_non_finite_loss_and_says_where(tmp_path):
    """lr 1000 diverges within a few steps: training stops right after the first step whose loss
    was not finite (on a CPU the loss is read every step), nothing is evaluated past it, and the
    result records the iteration. Oracle: the same job stopped just before that iteration is
    finite everywhere (so the recorded iteration is the first), and its trajectory is a prefix."""
    job = TrainJob(train=dataclasses.replace(CFG, optimizer=OptimizerConfig(lr=1000.0, momentum=0.9)),
                   init_seed=1, data_seed=3, save_iters=(0, 50))
    steps: list[int] = []
    r = run_train_job(job, TrainPaths(out_dir=str(tmp_path / "a")), Runtime(device=torch.device("cpu"), on_step=steps.append))
    first = r.nonfinite_iter
    assert first is not None and 0 <= first < 40, first
    assert r.end_iter == first + 1 and len(steps) == first  # stopped after that step, not at iteration 60
    assert max(m.iteration for m in r.metrics) == r.end_iter and math.isnan(r.test_loss)  # the reporting is kept
    assert 50 not in r.saved_weights  # a rewinding point past the stop is not replayed on NaN
    if first > 0:
        before = run(dataclasses.replace(job, end_iter=first, save_iters=()), tmp_path / "b")
        assert before.nonfinite_iter is None
        assert all(torch.isfinite(v).all() for v in weights(before.weights_path).values())
