"""Pruning at initialization: scores of W_k before training from k (SNIP, GraSP, SynFlow, and the
two baselines). Every scorer works on a deep copy of `inp.model` loaded with `inp.weights`
masked by `inp.mask`: the job's own model and weights are never touched.

Choices that differ between the reference implementations (research file, 1.2 and 1.6) are
fixed here: the actual W_k is scored (no re-initialisation of a copy before scoring, as mil-ad/snip
and alecwangcq/GraSP do), with cross-entropy on logits, BatchNorm in `inp.bn_mode` (eval by
default, as Synaptic-Flow), and SynFlow in float64.
"""
from __future__ import annotations

import copy

import torch

from trainers.methods.base import ScoreInputs


def _loaded_copy(inp: ScoreInputs, dtype: torch.dtype | None = None) -> torch.nn.Module:
    if inp.model is None:
        raise ValueError("pruning at initialization needs a model to score")
    model = copy.deepcopy(inp.model).cpu()
    if dtype is not None:
        model = model.to(dtype)
    model.load_state_dict({k: v.detach().cpu() for k, v in inp.weights.items()})
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, m in inp.mask.items():
            params[n].mul_(m.to(params[n].dtype))
    return model


def _scored_params(model: torch.nn.Module, inp: ScoreInputs) -> list[torch.Tensor]:
    params = dict(model.named_parameters())
    return [params[n] for n in inp.mask]


def _batch(inp: ScoreInputs, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    if inp.batch is None:
        raise ValueError("this method scores on a batch of training data: none was given")
    x, y = inp.batch
    dtype = next(model.parameters()).dtype

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.cpu().to(dtype) if t.is_floating_point() else t.cpu()

    return cast(x), cast(y)


def snip(inp: ScoreInputs) -> dict[str, torch.Tensor]:
    """|∂L/∂c| at c = 1 for w_eff = c ⊙ θ, which is |g ⊙ θ| with g = ∂L/∂θ (Lee et al. 2019)."""
    model = _loaded_copy(inp)
    model.train(inp.bn_mode == "train")
    x, y = _batch(inp, model)
    params = _scored_params(model, inp)
    grads = torch.autograd.grad(inp.loss(model(x), y), params)
    return {n: (g * p).detach().abs() for n, g, p in zip(inp.mask, grads, params)}


def grasp_products(inp: ScoreInputs) -> dict[str, torch.Tensor]:
    """θ ⊙ Hg with g = ∇L and L the cross-entropy of logits / T (Wang et al. 2020), Hg by
    double backpropagation: ∇(stop_grad(g) · ∇L)."""
    model = _loaded_copy(inp)
    model.train(inp.bn_mode == "train")
    x, y = _batch(inp, model)
    params = _scored_params(model, inp)
    grads = torch.autograd.grad(inp.loss(model(x) / inp.temperature, y), params, create_graph=True)
    z = sum((g.detach() * gg).sum() for g, gg in zip(grads, grads))
    hg = torch.autograd.grad(z, params)
    return {n: (p * h).detach() for n, p, h in zip(inp.mask, params, hg)}


def grasp(inp: ScoreInputs) -> dict[str, torch.Tensor]:
    """The paper's GraSP: it removes the largest -θ⊙Hg, so the largest θ⊙Hg are kept (signed)."""
    return grasp_products(inp)


def grasp_abs(inp: ScoreInputs) -> dict[str, torch.Tensor]:
    """|θ⊙Hg|: the lowest-magnitude scores are removed (Frankle et al. 2021's better variant)."""
    return {n: s.abs() for n, s in grasp_products(inp).items()}


def synflow(inp: ScoreInputs) -> dict[str, torch.Tensor]:
    """One SynFlow round (Tanaka et al. 2020): S = θ ⊙ ∂R/∂θ with R = 1ᵀ f(1; |θ|), every floating
    parameter and buffer made positive, BatchNorm in eval mode, an all-ones input of one example,
    in float64 (float32 underflows to all-zero scores on deep nets). The schedule of rounds is
    `trainers.methods.compute_mask`'s."""
    model = _loaded_copy(inp, torch.float64)
    with torch.no_grad():
        for t in model.state_dict().values():  # state_dict tensors share storage with the model
            if t.is_floating_point():
                t.abs_()
    model.eval()
    params = _scored_params(model, inp)
    x = torch.ones((1, *inp.input_shape), dtype=torch.float64)
    grads = torch.autograd.grad(model(x).sum(), params)
    return {n: (p * g).detach() for n, p, g in zip(inp.mask, params, grads)}


def magnitude_init(inp: ScoreInputs) -> dict[str, torch.Tensor]:
    """|W_k|."""
    return {n: inp.weights[n].detach().to("cpu", torch.float64).abs() for n in inp.mask}


def random_init(inp: ScoreInputs) -> dict[str, torch.Tensor]:
    """i.i.d. N(0, 1) scores (Synaptic-Flow's Rand), drawn tensor by tensor in mask order."""
    gen = torch.Generator(device="cpu").manual_seed(int(inp.seed))
    return {n: torch.randn(m.shape, generator=gen, dtype=torch.float64) for n, m in inp.mask.items()}
