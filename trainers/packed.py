"""Packed training: K sibling `train` jobs trained at once in one process, on one device.

Small networks (cifar_resnet_20 at batch 128, LeNet) leave a GPU mostly idle: each step is a
few hundred tiny kernels whose launch cost, not arithmetic, sets the pace. Packing trains K
networks as one: their parameters and buffers are stacked along a new leading dimension
(`torch.func.stack_module_state`) and one `vmap(functional_call)` runs all K forward and
backward passes with batched kernels (convolutions become grouped convolutions), so the
launch cost is paid once for K networks.

Packable jobs (`packing_problem` says why not): the same TrainConfig, the same start and end
iterations and the same learning rate per iteration (retrain mode, finetune_lr). They may
differ in everything else: init seed, data-order seed, mask, starting weights, pruning. Typical
packs: the children of one branch point, or the same level of K lineages.

Each member reads its own data stream (the K batches are stacked), has its own mask, its own
BatchNorm running statistics (buffers are stacked too, and vmap updates each member's slice),
and its own optimizer state (SGD and Adam are elementwise, so one optimizer over the stacked
tensors is K independent optimizers). Results equal one-by-one training up to float
rounding (grouped convolutions sum in another order), and every member writes exactly the
files `train()` writes (weights.pt, mask.pt, w_<k>.pt, result.json, and checkpoint.pt in
train()'s format while running), so the orchestrator cannot tell the difference, and a packed
job interrupted mid-way can be resumed packed or one by one.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import time
import warnings
from typing import Callable, Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state

from trainers import checkpoint
from trainers.data import open_data
from trainers.evaluate import autocast_for, evaluate, param_dtype, to_model_input
from trainers.jobs import MetricRow, TrainJob, TrainPaths, TrainResult
from trainers.models import build_model
from trainers.pruning import MaskApplier, density
from trainers.runtime import Runtime
from trainers.train import (
    CHECKPOINT, MASK, RESULT, WEIGHTS, add_missing_rewind_points, build_optimizer, device_name, fingerprint, lr_for, rewind_file, saved_rewind_points, starting_point, train, validate,
)

MetricCallback = Callable[[MetricRow], None]


def packing_problem(jobs: Sequence[TrainJob]) -> str | None:
    """Why `jobs` cannot be trained as one pack, or None when they can."""
    if not jobs:
        return "no jobs"
    first = jobs[0]
    for i, job in enumerate(jobs[1:], 1):
        if job.train != first.train:
            return f"job {i} has another TrainConfig than job 0"
        if (job.start_iter, job.stop_iter) != (first.start_iter, first.stop_iter):
            return f"job {i} trains [{job.start_iter}, {job.stop_iter}), job 0 [{first.start_iter}, {first.stop_iter})"
        if any(lr_for(job, it) != lr_for(first, it) for it in (job.start_iter, job.stop_iter - 1)) or (
            (job.retrain == "finetune" and job.prune is not None) != (first.retrain == "finetune" and first.prune is not None)
        ):
            return f"job {i} follows another learning-rate schedule than job 0 (retrain mode or finetune_lr)"
    return None


class _Member(nn.Module):
    """Member k of a pack as an ordinary module (for evaluation): no copy, views of the stacks."""

    def __init__(self, base: nn.Module, params: dict, buffers: dict, k: int):
        super().__init__()
        self.base = base
        self._state = lambda: {**{n: p[k] for n, p in params.items()}, **{n: b[k] for n, b in buffers.items()}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, self._state(), (x,))


def _member_optimizer_state(packed: dict, k: int, stacked: list[torch.Tensor]) -> dict:
    """Member k's slice of the packed optimizer's state_dict, in a single model's format."""
    state = {}
    for i, entry in packed["state"].items():
        shape = stacked[i].shape
        state[i] = {n: (v[k].clone() if torch.is_tensor(v) and v.shape == shape else copy.deepcopy(v)) for n, v in entry.items()}
    return {"state": state, "param_groups": copy.deepcopy(packed["param_groups"])}


def _stack_optimizer_states(members: list[dict], stacked: list[torch.Tensor]) -> dict:
    """The inverse of `_member_optimizer_state`: K single-model state_dicts -> the packed one."""
    state = {}
    for i, entry in members[0]["state"].items():
        shape = stacked[i].shape[1:]
        state[i] = {
            n: (torch.stack([m["state"][i][n] for m in members]) if torch.is_tensor(v) and v.shape == shape else v)
            for n, v in entry.items()
        }
    return {"state": state, "param_groups": members[0]["param_groups"]}


def train_packed(
    jobs: Sequence[TrainJob],
    paths: Sequence[TrainPaths],
    rt: Runtime,
    on_metrics: Sequence[MetricCallback | None] | None = None,
    strategy: Literal["auto", "vmap", "sequential"] = "auto",
) -> list[TrainResult]:
    """Train `jobs` (packable: see `packing_problem`) as one pack; one TrainResult per job.

    on_metrics: one live-metric callback per job (rows do not say which job they belong to);
    when omitted, `rt.on_metric` receives every member's rows.
    strategy: "vmap" trains the K networks as one; "sequential" calls train() for each in turn;
    "auto" is vmap on CUDA and sequential on CPU, where a CPU is busy with one network already
    and grouped convolutions measured slower than K separate runs (BENCHMARKS.md).
    Members already done (result.json present) are returned as they are and not retrained.
    Members whose checkpoints are at different iterations are trained one by one (train()).
    """
    t_start = time.time()
    jobs, paths = list(jobs), list(paths)
    if len(jobs) != len(paths):
        raise ValueError(f"train_packed: {len(jobs)} jobs but {len(paths)} paths")
    problem = packing_problem(jobs)
    if problem is not None:
        raise ValueError(f"train_packed: jobs cannot be packed: {problem}")
    if len({os.path.abspath(p.out_dir) for p in paths}) != len(paths):
        raise ValueError("train_packed: two jobs share an out_dir")
    if strategy not in ("auto", "vmap", "sequential"):
        raise ValueError(f"train_packed: strategy must be auto, vmap or sequential, got {strategy!r}")
    vmap = strategy == "vmap" or (strategy == "auto" and rt.device.type == "cuda")
    callbacks = list(on_metrics) if on_metrics is not None else [rt.on_metric] * len(jobs)
    if len(callbacks) != len(jobs):
        raise ValueError(f"train_packed: {len(jobs)} jobs but {len(callbacks)} on_metrics callbacks")
    for job, p in zip(jobs, paths):
        validate(job, p)

    results: list[TrainResult | None] = [None] * len(jobs)
    todo = []
    for i, p in enumerate(paths):
        result_path = os.path.join(p.out_dir, RESULT)
        if os.path.exists(result_path) and os.path.exists(os.path.join(p.out_dir, WEIGHTS)):
            # train() returns the stored result, adding any rewinding point it lacks
            results[i] = train(jobs[i], p, dataclasses.replace(rt, on_metric=callbacks[i]))
        else:
            todo.append(i)
    if todo:
        ckpts = [checkpoint.load_resumable(os.path.join(paths[i].out_dir, CHECKPOINT), fingerprint(jobs[i])) for i in todo]
        starts = {None if c is None else c["iteration"] for c in ckpts}
        if not vmap or len(todo) == 1 or len(starts) > 1 or not vmap_supported(jobs[todo[0]], rt):
            # Not asked for, nothing to pack, members at different points, or a model vmap cannot batch.
            for i in todo:
                results[i] = train(jobs[i], paths[i], dataclasses.replace(rt, on_metric=callbacks[i]))
        else:
            packed = _train_pack([jobs[i] for i in todo], [paths[i] for i in todo], ckpts, rt, [callbacks[i] for i in todo], t_start)
            for i, r in zip(todo, packed):
                results[i] = r
    return results  # type: ignore[return-value]


def _functional_forward(model: nn.Module) -> tuple[Callable, nn.Module]:
    base = copy.deepcopy(model).to("meta")

    def one(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (x,))

    return torch.vmap(one), base


def vmap_supported(job: TrainJob, rt: Runtime) -> bool:
    """Whether two copies of the job's model train under vmap on rt.device (a forward and a
    backward pass in training mode on two examples each, with BatchNorm updating stacked
    buffers); a model or device where it does not gets the one-by-one fallback."""
    cfg = job.train
    info = open_data(cfg.data, rt.device, rt.data_cache).info
    try:
        model = build_model(cfg.model, info.input_shape, info.num_classes, seed=0).to(rt.device, param_dtype(cfg.precision))
        params, buffers = stack_module_state([model, model])
        params = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        forward, _ = _functional_forward(model)
        x = torch.randn(2, 2, *info.input_shape, device=rt.device, dtype=param_dtype(cfg.precision))
        with autocast_for(rt.device, cfg.precision):
            forward(params, {n: b.detach() for n, b in buffers.items()}, x).float().sum().backward()
    except Exception as e:  # a missing batching rule raises RuntimeError/NotImplementedError
        warnings.warn(f"train_packed: {cfg.model} does not train under vmap on {rt.device} ({e!r}); "
                      "training the jobs one by one")
        return False
    return True


def _train_pack(jobs: list[TrainJob], paths: list[TrainPaths], ckpts: list[dict | None], rt: Runtime,
                callbacks: list[MetricCallback | None], t_start: float) -> list[TrainResult]:
    K = len(jobs)
    job0, cfg, device = jobs[0], jobs[0].train, rt.device
    for p in paths:
        os.makedirs(p.out_dir, exist_ok=True)
    data = open_data(cfg.data, device, rt.data_cache, num_workers=rt.loader_workers())
    info = data.info

    # --- starting points: each member's checkpoint, or its inputs, exactly as train() --------
    models, masks, metrics = [], [], []
    resumed = ckpts[0] is not None
    for job, p, ckpt in zip(jobs, paths, ckpts):
        model = build_model(cfg.model, info.input_shape, info.num_classes, seed=job.init_seed).to(param_dtype(cfg.precision))
        if ckpt is not None:
            weights, mask, rows = ckpt["model"], ckpt["mask"], [MetricRow(**m) for m in ckpt["metrics"]]
        else:
            weights, mask = starting_point(job, p, model, info)
            rows = []
            checkpoint.save(mask, os.path.join(p.out_dir, MASK))
        model.load_state_dict(weights)
        models.append(model.to(device))
        masks.append(mask)
        metrics.append(rows)
    start = ckpts[0]["iteration"] if resumed else job0.start_iter

    # --- the pack: stacked parameters and buffers, one functional model -----------------------
    params, buffers = stack_module_state(models)
    params = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    buffers = {n: b.detach() for n, b in buffers.items()}
    forward, base = _functional_forward(models[0])
    order = list(base.state_dict().keys())  # the files list tensors in a single model's order
    del models
    if any(set(m) != set(masks[0]) for m in masks):
        raise ValueError("train_packed: members' masks cover different tensors (another prune.ignore?)")
    stacked_mask = {n: torch.stack([m[n] for m in masks]) for n in masks[0]}
    applier = MaskApplier(params, stacked_mask)
    applier.apply_to_weights()
    plist = list(params.values())
    optimizer = build_optimizer(cfg.optimizer, plist, [p.ndim <= 2 for p in plist], device)
    # state_dict numbers parameters group by group: the same numbering as a single model's.
    numbered = [p for group in optimizer.param_groups for p in group["params"]]
    if resumed:
        optimizer.load_state_dict(_stack_optimizer_states([c["optimizer"] for c in ckpts], numbered))
        torch.set_rng_state(ckpts[0]["rng"]["cpu"])

    if cfg.compile:
        forward = torch.compile(forward)
    members = [_Member(base, params, buffers, k) for k in range(K)]

    def member_state(k: int) -> dict[str, torch.Tensor]:
        both = {**params, **buffers}
        return {n: both[n][k].detach().to("cpu", copy=True) for n in order}

    # --- hooks, as train() has them ----------------------------------------------------------
    eval_bs = max(cfg.batch_size, 256)

    def run_eval(it: int) -> None:
        for k in range(K):
            for split, limit in (("test", None), ("train", cfg.eval_train_examples)):
                loss, acc = evaluate(members[k], data.eval_batches(split, eval_bs, limit), device, cfg.precision, False)
                row = MetricRow(iteration=it, split=split, loss=loss, accuracy=acc)
                metrics[k].append(row)
                if callbacks[k] is not None:
                    callbacks[k](row)

    def save_checkpoints(next_it: int) -> None:
        packed_opt = optimizer.state_dict()
        for k, (job, p) in enumerate(zip(jobs, paths)):
            checkpoint.save(
                {
                    "fingerprint": fingerprint(job),
                    "iteration": next_it,
                    "model": member_state(k),
                    "optimizer": _member_optimizer_state(packed_opt, k, numbered),
                    "mask": masks[k],
                    "metrics": [dataclasses.asdict(m) for m in metrics[k]],
                    "rng": {"cpu": torch.get_rng_state()},
                },
                os.path.join(p.out_dir, CHECKPOINT),
            )

    def save_rewind_points(it: int) -> None:
        for k, (job, p) in enumerate(zip(jobs, paths)):
            if it in job.save_iters:
                checkpoint.save(member_state(k), os.path.join(p.out_dir, rewind_file(it)))

    # --- the loop: train() step for step, K networks at a time --------------------------------
    streams = [data.train_stream(job.data_seed, cfg.batch_size, start) for job in jobs]
    last_ckpt_time = time.time()
    base.train()
    for it in range(start, job0.stop_iter):
        save_rewind_points(it)
        if it == job0.start_iter or (cfg.eval_every > 0 and it % cfg.eval_every == 0):
            run_eval(it)
        for group in optimizer.param_groups:
            group["lr"] = lr_for(job0, it)
        batches = [next(s) for s in streams]
        x = to_model_input(torch.stack([b[0] for b in batches]), False, cfg.precision)
        y = torch.stack([b[1] for b in batches])
        with autocast_for(device, cfg.precision):
            logits = forward(params, buffers, x)  # (K, B, classes)
            per_example = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none", label_smoothing=cfg.label_smoothing)
            # Each member's mean loss; the sum's gradient is every member's own gradient.
            loss = per_example.view(K, -1).mean(1).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        applier.apply_to_grads()  # as in train(): masked gradients keep pruned weights at zero
        optimizer.step()
        done = it + 1
        by_iters = paths[0].checkpoint_every_iters > 0 and done % paths[0].checkpoint_every_iters == 0
        by_time = time.time() - last_ckpt_time >= paths[0].checkpoint_every_seconds
        if done < job0.stop_iter and (by_iters or by_time):
            save_checkpoints(done)
            last_ckpt_time = time.time()

    # --- the end: each member's files, exactly as train() writes them --------------------------
    end = job0.stop_iter
    save_rewind_points(end)
    run_eval(end)
    results = []
    wall = time.time() - t_start
    for k, (job, p) in enumerate(zip(jobs, paths)):
        out = p.out_dir
        final = {m.split: m for m in metrics[k] if m.iteration == end}
        checkpoint.save(member_state(k), os.path.join(out, WEIGHTS))
        result = TrainResult(
            metrics=metrics[k],
            test_loss=final["test"].loss,
            test_accuracy=final["test"].accuracy,
            train_loss=final["train"].loss,
            train_accuracy=final["train"].accuracy,
            density=density(masks[k]),
            start_iter=job.start_iter,
            end_iter=end,
            wall_seconds=wall,
            device=device_name(device),
            weights_path=os.path.join(out, WEIGHTS),
            mask_path=os.path.join(out, MASK),
            saved_weights=saved_rewind_points(job, out),
            resumed_from=start if resumed else None,
        )
        checkpoint.save_json(dataclasses.asdict(result), os.path.join(out, RESULT))
        ckpt_path = os.path.join(out, CHECKPOINT)
        if os.path.exists(ckpt_path):
            os.unlink(ckpt_path)
        results.append(add_missing_rewind_points(job, out, result, rt))  # a k added mid-run
    return results
