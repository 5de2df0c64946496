"""Linear mode connectivity: evaluate theta(a) = (1 - a) theta_A + a theta_B along the segment.

`barrier = max_a error(a) - (error(0) + error(1)) / 2` per split (Frankle et al., ICML 2020).
Interpolated BatchNorm running statistics are not the statistics of the interpolated network;
`bn_reset` recomputes them on a fixed set of training batches for every alpha. Those batches are
training images as evaluation sees them (its transform, so its resolution: not the first epoch's
low-resolution crops of progressive resizing) and go through evaluation's input conversion
(autocast, channels_last, fp64), so the statistics are those of the inputs they normalise.
"""
from __future__ import annotations

import time

import torch

from trainers import checkpoint
from trainers.data.sources import open_data
from trainers.determinism import kernels
from trainers.evaluate import autocast_for, evaluate, param_dtype, to_model_input
from trainers.jobs import Instability, InterpolateJob, InterpolatePaths, InterpolateResult, InterpolationRow
from trainers.models import build_model
from trainers.runtime import Runtime
from trainers.train import device_name

# Keep evaluation batches resident across alphas when they fit in this many bytes.
_RESIDENT_EVAL_BYTES = 2 << 30


def barrier(errors: list[float]) -> float:
    return max(errors) - (errors[0] + errors[-1]) / 2


def lerp_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    out = {}
    for k, ta in a.items():
        tb = b[k]
        # Integer buffers (BatchNorm's num_batches_tracked) are counters, not coordinates.
        out[k] = torch.lerp(ta, tb, alpha) if ta.is_floating_point() else ta.clone()
    return out


def check_pair(a: dict, b: dict, paths: InterpolatePaths) -> None:
    if a.keys() != b.keys():
        diff = sorted(a.keys() ^ b.keys())[:5]
        raise ValueError(f"weights {paths.weights_a} and {paths.weights_b} hold different tensors: {diff}")
    for k in a:
        if a[k].shape != b[k].shape:
            raise ValueError(f"weights {paths.weights_a} and {paths.weights_b}: {k} has shapes {tuple(a[k].shape)} vs {tuple(b[k].shape)}")


@torch.no_grad()
def recompute_bn_stats(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
                       device: torch.device | None = None, precision: str = "fp32",
                       channels_last: bool = False) -> None:
    """BatchNorm running statistics from `batches`, run as `evaluate` runs the model (same
    autocast and input conversion), so that evaluation normalises with statistics of its own
    arithmetic."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the reset batches
    was_training = model.training
    model.train()
    device = device if device is not None else next(model.parameters()).device
    with autocast_for(device, precision):
        for x, _ in batches:
            model(to_model_input(x, channels_last, precision))
    model.train(was_training)
    for m, mom in zip(norms, momenta):
        m.momentum = mom


def bn_reset_batches(data, batch_size: int, n_batches: int) -> list:
    """The BatchNorm-reset batches: the first `n_batches` full batches of the training split
    through the evaluation transform (the fixed subset evaluation draws, at its resolution)."""
    n = min(batch_size * n_batches, data.info.num_train)
    return list(data.eval_batches("train", batch_size, n))


def _eval_source(data, split: str, batch_size: int, limit: int | None):
    first = next(iter(data.eval_batches(split, batch_size, limit)))
    per_example = first[0][0].numel() * first[0].element_size()
    n = min(limit or 1 << 62, data.info.num_test if split == "test" else data.info.num_train)
    if n * per_example <= _RESIDENT_EVAL_BYTES:
        cached = list(data.eval_batches(split, batch_size, limit))
        return lambda: cached
    return lambda: data.eval_batches(split, batch_size, limit)


def interpolate(job: InterpolateJob, paths: InterpolatePaths, rt: Runtime) -> InterpolateResult:
    with kernels(job.train.deterministic, rt.device):
        return _interpolate(job, paths, rt)


def _interpolate(job: InterpolateJob, paths: InterpolatePaths, rt: Runtime) -> InterpolateResult:
    t_start = time.time()
    if job.num_alphas < 2:
        raise ValueError(f"num_alphas: need at least 2 points, got {job.num_alphas}")
    for split in job.splits:
        if split not in ("test", "train"):
            raise ValueError(f"splits: unknown split {split!r} (valid: test, train)")
    cfg, device = job.train, rt.device
    wa, wb = checkpoint.load_weights(paths.weights_a), checkpoint.load_weights(paths.weights_b)
    check_pair(wa, wb, paths)
    mask = checkpoint.load_mask(paths.mask) if paths.mask else {}

    data = open_data(cfg.data, device, rt.data_cache, num_workers=rt.loader_workers())
    channels_last = cfg.channels_last and device.type == "cuda"
    model = build_model(cfg.model, data.info.input_shape, data.info.num_classes, seed=0)
    # fp64: the weights in float64 as evaluation's inputs are (train() holds them so too)
    model.to(device, dtype=param_dtype(cfg.precision),
             memory_format=torch.channels_last if channels_last else torch.preserve_format)
    # 31 alphas x 2 splits of forward passes only: big batches keep a GPU busy.
    eval_bs = max(cfg.batch_size, 2048 if device.type == "cuda" else 512)
    sources = {
        split: _eval_source(data, split, eval_bs, job.train_examples if split == "train" else None)
        for split in job.splits
    }
    bn_batches: list = []
    if job.bn_reset:
        bn_batches = bn_reset_batches(data, cfg.batch_size, job.bn_reset_batches)

    dtype = param_dtype(cfg.precision)
    # Floating tensors in the model's dtype before the lerp (an fp32 checkpoint read for an
    # fp64 evaluation is interpolated in float64); integer buffers stay as they are.
    wa = {k: v.to(device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in wa.items()}
    wb = {k: v.to(device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in wb.items()}
    mask = {k: v.to(device) for k, v in mask.items()}
    alphas = torch.linspace(0.0, 1.0, job.num_alphas, dtype=torch.float64).tolist()
    rows: list[InterpolationRow] = []
    for alpha in alphas:
        state = lerp_state(wa, wb, alpha)
        for name, m in mask.items():
            state[name].mul_(m)
        model.load_state_dict(state)
        if job.bn_reset:
            recompute_bn_stats(model, bn_batches, device, cfg.precision, channels_last)
        for split in job.splits:
            loss, acc = evaluate(model, sources[split](), device, cfg.precision, channels_last)
            rows.append(InterpolationRow(split=split, alpha=alpha, loss=loss, error=1.0 - acc))

    instability = []
    for split in job.splits:
        errors = [r.error for r in rows if r.split == split]
        instability.append(
            Instability(split=split, error_a=errors[0], error_b=errors[-1], max_error=max(errors), barrier=barrier(errors))
        )
    return InterpolateResult(rows=rows, instability=instability, wall_seconds=time.time() - t_start, device=device_name(device))
