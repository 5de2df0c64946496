"""Packed training: K sibling `train` jobs trained at once in one process, on one device.

Small networks (cifar_resnet_20 at batch 128, LeNet) leave a GPU mostly idle: each step is a
few hundred tiny kernels whose launch cost, not arithmetic, sets the pace. Packing trains K
networks as one stacked network (trainers/stacked.py: grouped convolutions, BatchNorm over K*C
channels, a batched linear head), so the launch cost is paid once for K networks, in fp32 and
bf16 alike.

Packable jobs (`packing_problem` says why not): the same TrainConfig, the same start and end
iterations and the same learning rate per iteration (retrain mode, finetune_lr). They may
differ in everything else: init seed, data-order seed, mask, starting weights, pruning. Typical
packs: the children of one branch point, or the same level of K lineages.

Each member reads its own data stream (with its own augmentation), has its own mask, its own
BatchNorm statistics and its own optimizer state (SGD and Adam are elementwise, so one
optimizer over the stacked tensors is K independent optimizers). Results equal one-by-one
training up to float rounding (grouped convolutions sum in another order; tests/test_packed.py
compares in float64), and every member writes exactly the files `train()` writes (weights.pt,
mask.pt, w_<k>.pt, result.json, and checkpoint.pt in train()'s format while running), so the
orchestrator cannot tell the difference, and a packed job interrupted mid-way can be resumed
packed or one by one. Each result's `strategy` records how it was trained. A member whose loss
stops being finite stops as train() stops a diverged job (read with train()'s rule,
trainers/train.py NonFinite), while the others train on; the pack ends when all have stopped.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import time
import warnings
from typing import Callable, Literal, Sequence

import torch

from trainers import checkpoint
from trainers.data.sources import open_data
from trainers.determinism import applied, kernels
from trainers.graphed import make_step
from trainers.evaluate import evaluate, param_dtype
from trainers.jobs import MetricRow, TrainJob, TrainPaths, TrainResult
from trainers.models import build_model
from trainers.correlation import layer_rows
from trainers.pruning import MaskApplier, density, masked_weights
from trainers.runtime import Runtime
from trainers.stacked import COUNTER, build_stacked, member_losses, member_state, stack_inputs, stack_problem
from trainers.train import (
    CHECKPOINT, MASK, RESULT, WEIGHTS, NonFinite, add_missing_rewind_points, collapse, device_name, fingerprint, lr_for, make_optimizer,
    rewind_file, saved_rewind_points, starting_point, structured_measures, train, validate,
)

MetricCallback = Callable[[MetricRow], None]
Strategy = Literal["auto", "stacked", "sequential"]


def packing_problem(jobs: Sequence[TrainJob]) -> str | None:
    """Why `jobs` cannot be trained as one pack, or None when they can."""
    if not jobs:
        return "no jobs"
    first = jobs[0]
    for i, job in enumerate(jobs):
        # the slimming penalty and structured masks (BatchNorm, biases) are the single loop's
        if (job.train.l1_gamma or (job.prune is not None and job.prune.granularity == "channel")
                or job.early_bird is not None or job.start_at_detection or job.channel_report is not None):
            return f"job {i} is structured or trains with train.l1_gamma: trained alone"
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


def _member_optimizer_state(packed: dict, k: int, K: int, stacked: list[torch.Tensor]) -> dict:
    """Member k's slice of the packed optimizer's state_dict, in a single model's format."""
    state = {}
    for i, entry in packed["state"].items():
        shape = stacked[i].shape
        state[i] = {n: (v.chunk(K)[k].clone() if torch.is_tensor(v) and v.shape == shape else copy.deepcopy(v)) for n, v in entry.items()}
    return {"state": state, "param_groups": copy.deepcopy(packed["param_groups"])}


def _stack_optimizer_states(members: list[dict], stacked: list[torch.Tensor]) -> dict:
    """The inverse of `_member_optimizer_state`: K single-model state_dicts -> the packed one
    (per-parameter tensors joined along dim 0; scalars such as Adam's step are equal across
    members, which start and resume at the same iteration)."""
    state = {}
    K = len(members)
    for i, entry in members[0]["state"].items():
        shape = stacked[i].shape
        state[i] = {
            n: (torch.cat([m["state"][i][n] for m in members]) if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] * K == shape[0] else v)
            for n, v in entry.items()
        }
    return {"state": state, "param_groups": members[0]["param_groups"]}


def stacking_problem(job: TrainJob, rt: Runtime) -> str | None:
    """Why the job's model cannot train stacked (None when it can); checked once per Runtime."""
    cfg = job.train
    info = open_data(cfg.data, rt.device, rt.data_cache).info
    key = (cfg.model, tuple(info.input_shape), info.num_classes)
    if key not in rt.stacking_checks:
        rt.stacking_checks[key] = stack_problem(*key)
    return rt.stacking_checks[key]


def train_packed(
    jobs: Sequence[TrainJob],
    paths: Sequence[TrainPaths],
    rt: Runtime,
    on_metrics: Sequence[MetricCallback | None] | None = None,
    strategy: Strategy = "auto",
) -> list[TrainResult]:
    """Train `jobs` (packable: see `packing_problem`) as one pack; one TrainResult per job.

    on_metrics: one live-metric callback per job (rows do not say which job they belong to);
    when omitted, `rt.on_metric` receives every member's rows.
    strategy: "stacked" trains the K networks as one (an error if the model cannot stack);
    "sequential" calls train() for each in turn; "auto" is stacked on CUDA and sequential on
    CPU, where a CPU is busy with one network already and grouped convolutions measured slower
    than K separate runs (BENCHMARKS.md). If auto cannot stack, it warns and trains one by one.
    Each result's `strategy` is what actually ran: "stacked", "sequential" or "single".
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
    if strategy not in ("auto", "stacked", "sequential"):
        raise ValueError(f"train_packed: strategy must be auto, stacked or sequential, got {strategy!r}")
    callbacks = list(on_metrics) if on_metrics is not None else [rt.on_metric] * len(jobs)
    if len(callbacks) != len(jobs):
        raise ValueError(f"train_packed: {len(jobs)} jobs but {len(callbacks)} on_metrics callbacks")
    for job, p in zip(jobs, paths):
        validate(job, p)
    stack = strategy == "stacked" or (strategy == "auto" and rt.device.type == "cuda")
    if stack:
        why = stacking_problem(jobs[0], rt)
        if why is not None and strategy == "stacked":
            raise ValueError(f"train_packed: strategy stacked: {why}")
        if why is not None:
            warnings.warn(f"train_packed: {why}; training the {len(jobs)} jobs one by one", stacklevel=2)
            stack = False

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
        if not stack or len(todo) == 1 or len(starts) > 1:
            # Not asked for, nothing to pack, or members at different points.
            for i in todo:
                r = train(jobs[i], paths[i], dataclasses.replace(rt, on_metric=callbacks[i]))
                results[i] = dataclasses.replace(r, strategy="sequential" if len(todo) > 1 else r.strategy)
        else:
            with kernels(jobs[0].train.deterministic, rt.device):
                packed = _train_stacked([jobs[i] for i in todo], [paths[i] for i in todo], ckpts, rt,
                                        [callbacks[i] for i in todo], t_start)
            for i, r in zip(todo, packed):
                results[i] = r
    return results  # type: ignore[return-value]


def _train_stacked(jobs: list[TrainJob], paths: list[TrainPaths], ckpts: list[dict | None], rt: Runtime,
                   callbacks: list[MetricCallback | None], t_start: float) -> list[TrainResult]:
    K = len(jobs)
    job0, cfg, device = jobs[0], jobs[0].train, rt.device
    for p in paths:
        os.makedirs(p.out_dir, exist_ok=True)
    data = open_data(cfg.data, device, rt.data_cache, num_workers=rt.loader_workers())
    info = data.info
    dtype = param_dtype(cfg.precision)

    # --- starting points: each member's checkpoint, or its inputs, exactly as train() --------
    states, masks, metrics, initials = [], [], [], []
    resumed = ckpts[0] is not None
    # fp64 before any weights are loaded, so that a float64 checkpoint is never rounded (train())
    model = build_model(cfg.model, info.input_shape, info.num_classes, seed=job0.init_seed, bn_scale_init=cfg.bn_scale_init).to(dtype)
    for job, p, ckpt in zip(jobs, paths, ckpts):
        if ckpt is not None:
            weights, mask, rows = ckpt["model"], ckpt["mask"], [MetricRow(**m) for m in ckpt["metrics"]]
            w0 = build_model(cfg.model, info.input_shape, info.num_classes, seed=job.init_seed, bn_scale_init=cfg.bn_scale_init).to(dtype)
            initials.append(masked_weights(*starting_point(job, p, w0, info, data)))  # the weight correlation's start
        else:
            w0 = build_model(cfg.model, info.input_shape, info.num_classes, seed=job.init_seed, bn_scale_init=cfg.bn_scale_init).to(dtype)
            weights, mask = starting_point(job, p, w0, info, data)
            initials.append(masked_weights(weights, mask))
            rows = []
            checkpoint.save(mask, os.path.join(p.out_dir, MASK))
        model.load_state_dict(weights)  # the single model's dtypes and checks, as train() loads them
        states.append(checkpoint.state_dict_cpu(model))
        masks.append(mask)
        metrics.append(rows)
    start = ckpts[0]["iteration"] if resumed else job0.start_iter
    if any(set(m) != set(masks[0]) for m in masks):
        raise ValueError("train_packed: members' masks cover different tensors (another prune.ignore?)")
    order = list(states[0])  # the files list tensors in a single model's order
    counters = [{n: s[n].to(device) for n in order if n.endswith(COUNTER)} for s in states]

    # --- the stacked network, its mask and its optimizer ---------------------------------------
    channels_last = cfg.channels_last and device.type == "cuda"
    fmt = torch.channels_last if channels_last else torch.preserve_format
    net = build_stacked(model, states, device, dtype, fmt)
    del states
    applier = MaskApplier(net, {n: torch.cat([m[n] for m in masks]) for n in masks[0]})
    applier.apply_to_weights()
    # The same module tree and the same tensor ranks as one model: the same parameter groups
    # and the same numbering in state_dict, so member k's state is a slice of the packed one.
    optimizer = make_optimizer(job0, net, device)
    numbered = [p for group in optimizer.param_groups for p in group["params"]]
    if resumed:
        optimizer.load_state_dict(_stack_optimizer_states([c["optimizer"] for c in ckpts], numbered))
        torch.set_rng_state(ckpts[0]["rng"]["cpu"])
    forward = torch.compile(net) if cfg.compile else net

    def loss_of(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return member_losses(logits, y, K, cfg.label_smoothing)

    step = make_step(forward, loss_of, net, optimizer, applier, device, cfg.precision, cfg.cuda_graphs)
    evaluator = model.to(device, memory_format=fmt)  # one member at a time, train()'s own evaluation

    def member(k: int) -> dict[str, torch.Tensor]:
        return {n: t.detach().to("cpu", copy=True) for n, t in member_state(net.state_dict(), k, K, counters[k]).items()}

    # --- hooks, as train() has them, for the members still training ---------------------------
    eval_bs = max(cfg.batch_size, 256)
    training = list(range(K))  # a member that diverged leaves this list at its stop iteration

    def run_eval(it: int, which: list[int]) -> None:
        stacked_state = net.state_dict()
        for k in which:
            evaluator.load_state_dict(member_state(stacked_state, k, K, counters[k]))
            for split, limit in (("test", None), ("train", cfg.eval_train_examples)):
                loss, acc = evaluate(evaluator, data.eval_batches(split, eval_bs, limit), device, cfg.precision, channels_last)
                row = MetricRow(iteration=it, split=split, loss=loss, accuracy=acc)
                metrics[k].append(row)
                if callbacks[k] is not None:
                    callbacks[k](row)

    def save_checkpoints(next_it: int) -> None:
        packed_opt = optimizer.state_dict()
        for k in training:
            checkpoint.save(
                {
                    "fingerprint": fingerprint(jobs[k]),
                    "iteration": next_it,
                    "model": member(k),
                    "optimizer": _member_optimizer_state(packed_opt, k, K, numbered),
                    "mask": masks[k],
                    "metrics": [dataclasses.asdict(m) for m in metrics[k]],
                    "rng": {"cpu": torch.get_rng_state()},
                },
                os.path.join(paths[k].out_dir, CHECKPOINT),
            )

    def save_rewind_points(it: int, which: list[int]) -> None:
        for k in which:
            if it in jobs[k].save_iters:
                checkpoint.save(member(k), os.path.join(paths[k].out_dir, rewind_file(it)))

    results: dict[int, TrainResult] = {}

    def finish(which: list[int], end: int, nonfinite_iters: list[int | None]) -> None:
        """The members' files at their last iteration, exactly as train() writes them: the pack's
        end, or where a diverged member stopped (its slot in the stacked network trains on, on
        NaN, and is never read again: taking it out would change the grouped kernels' shapes,
        and with them the rounding of the members still training)."""
        save_rewind_points(end, which)
        run_eval(end, which)
        for k in which:
            job, out = jobs[k], paths[k].out_dir
            final = {m.split: m for m in metrics[k] if m.iteration == end}
            final_weights = member(k)
            checkpoint.save(final_weights, os.path.join(out, WEIGHTS))
            correlation, layers = layer_rows(initials[k], final_weights, masks[k])
            results[k] = TrainResult(
                metrics=metrics[k],
                test_loss=final["test"].loss,
                test_accuracy=final["test"].accuracy,
                train_loss=final["train"].loss,
                train_accuracy=final["train"].accuracy,
                density=density(masks[k]),
                start_iter=job.start_iter,
                end_iter=end,
                wall_seconds=time.time() - t_start,
                device=device_name(device),
                weights_path=os.path.join(out, WEIGHTS),
                mask_path=os.path.join(out, MASK),
                saved_weights=saved_rewind_points(job, out),
                resumed_from=start if resumed else None,
                deterministic=applied(cfg.deterministic, device),
                strategy="stacked",
                weight_correlation=correlation,
                layers=layers,
                **structured_measures(job, model, masks[k], info.input_shape),
                nonfinite_iter=nonfinite_iters[k],
                **collapse(model, masks[k], masks[k], info.input_shape),
            )
            checkpoint.save_json(dataclasses.asdict(results[k]), os.path.join(out, RESULT))
            ckpt_path = os.path.join(out, CHECKPOINT)
            if os.path.exists(ckpt_path):
                os.unlink(ckpt_path)

    # --- the loop: train() step for step, K networks at a time --------------------------------
    streams = [data.train_stream(job.data_seed, cfg.batch_size, start) for job in jobs]
    last_ckpt_time = time.time()
    net.train()
    nonfinite = NonFinite(device, 1, K)  # each member's own loss, read as train() reads a job's
    for it in range(start, job0.stop_iter):
        save_rewind_points(it, training)
        if it == job0.start_iter or (cfg.eval_every > 0 and it % cfg.eval_every == 0):
            run_eval(it, training)
        batches = [next(s) for s in streams]
        x = stack_inputs([b[0] for b in batches]).to(dtype)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        # as in train(): forward, backward, masked gradients (pruned weights stay zero), step
        nonfinite.see(step(x, torch.stack([b[1] for b in batches]), lr_for(job0, it)), it)
        done = it + 1
        by_iters = paths[0].checkpoint_every_iters > 0 and done % paths[0].checkpoint_every_iters == 0
        by_time = time.time() - last_ckpt_time >= paths[0].checkpoint_every_seconds
        eval_due = cfg.eval_every > 0 and done % cfg.eval_every == 0
        firsts = nonfinite.firsts(done, eval_due, by_iters or by_time)
        diverged = [k for k in training if firsts is not None and firsts[k] is not None]
        if diverged:  # they stop here, as train() stops a diverged job; the others go on
            training = [k for k in training if k not in diverged]
            finish(diverged, done, firsts)
            if not training:
                break
        if done < job0.stop_iter and (by_iters or by_time):
            save_checkpoints(done)
            last_ckpt_time = time.time()

    # --- the end: each member's files, exactly as train() writes them --------------------------
    if training:
        finish(training, job0.stop_iter, nonfinite.firsts(job0.stop_iter, eval_due=True, checkpoint_due=True))
    # a k added mid-run, replayed once the pack's loop is over (a replay is a train() of its own)
    return [add_missing_rewind_points(jobs[k], paths[k].out_dir, results[k], rt) for k in range(K)]
