"""One training step, eager or captured as a CUDA graph (`train.cuda_graphs`).

A small network's step is a few hundred short kernels; launching them costs more than running
them. A CUDA graph records the whole step once (forward, backward, gradient masks, the fused
optimizer's update) and replays it with a single launch. What that needs, and how it is met:
- static shapes and addresses: each batch is copied into fixed input tensors; gradients and
  optimizer state live in the graph's memory pool from the capture on;
- a capturable optimizer: fused SGD/Adam with the learning rate as a device tensor, refilled
  before each replay (the schedule stays a function of the iteration, as in eager mode);
- no host synchronisation inside the step: the loss is never read back; the data stream draws
  each epoch's permutation once and indexes on the device (trainers/data/resident.py);
- autocast without its weight-cast cache (a cache entry made during capture would be stale).
Capture needs warm-up steps, which update the weights: every parameter, buffer and optimizer
state is copied before and restored after, so the run's first real step is the captured one
and the trajectory is the eager one's.
A graph replays one input shape. Progressive resizing (data.min_res/max_res) changes the side
at epoch boundaries: a batch of another shape releases the graph and captures a new one (its
warm-up undone as above). Sides only grow along the ramp, so one graph is held at a time and a
run captures once per side. What cannot be captured is refused before training
(trainers/graph_rules.py: streamed data, torch.compile), and capture stays in PyTorch's default
global error mode: any CUDA call another thread makes during capture is an error, not a silent
corruption.

Both loops (trainers/train.py, trainers/packed.py) call `make_step` and then `step(x, y, lr)`,
which returns the step's loss as a device tensor (never read back here: the caller decides when
a host synchronisation is worth it). A stacked pack's `loss_of` returns one loss per member: the
step backpropagates their sum and returns them all, so each member's divergence is seen.
"""
from __future__ import annotations

from typing import Callable

import torch

from trainers.evaluate import autocast_for
from trainers.pruning import MaskApplier

Step = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
WARMUP_STEPS = 3  # side-stream iterations before capture (PyTorch's CUDA graphs recipe)


def make_step(forward: Callable[[torch.Tensor], torch.Tensor], loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
              model: torch.nn.Module, optimizer: torch.optim.Optimizer, masks: MaskApplier, device: torch.device,
              precision: str, cuda_graphs: bool) -> Step:
    """`step(x, y, lr)`: one optimizer step on batch (x, y) at learning rate lr; returns its loss
    (what `loss_of` returns: a scalar, or a vector of independent losses whose sum is minimised)."""
    if not cuda_graphs:
        return _eager(forward, loss_of, optimizer, masks, device, precision)
    if device.type != "cuda":
        raise ValueError(f"train.cuda_graphs: CUDA graphs need a CUDA device, not {device}")
    return _Captured(forward, loss_of, model, optimizer, masks, device, precision)


def _eager(forward, loss_of, optimizer, masks, device, precision) -> Step:
    def step(x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast_for(device, precision):
            loss = loss_of(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        _total(loss).backward()
        # Pruned weights are zero and their gradients are masked, so SGD's and Adam's updates
        # of them (decay and momentum included) are exactly zero: no weight mask after the step
        # is needed, which halves the mask work (tests/test_packed.py checks the zeros mid-run).
        masks.apply_to_grads()
        optimizer.step()
        return loss.detach()

    return step


class _Captured:
    def __init__(self, forward, loss_of, model, optimizer, masks, device, precision):
        self.optimizer = optimizer
        # The learning rate as a device tensor: a capturable fused optimizer reads it each replay.
        self.lr = torch.zeros((), device=device, dtype=torch.float32)
        for group in optimizer.param_groups:
            group["lr"] = self.lr
            if "capturable" in group:
                group["capturable"] = True
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None  # the captured step's loss, refilled by each replay
        self.captures = 0  # graphs captured so far (one per input shape met)
        self._parts = (forward, loss_of, model, masks, device, precision)

    def _body(self) -> None:
        forward, loss_of, _, masks, device, precision = self._parts
        with autocast_for(device, precision, cache_enabled=False):
            loss = loss_of(forward(self.x), self.y)
        _total(loss).backward()
        masks.apply_to_grads()
        self.optimizer.step()
        self.loss = loss.detach()

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        _, _, model, _, _, _ = self._parts
        self.x, self.y = x.clone(), y.clone()
        saved = _snapshot(model, self.optimizer)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self.optimizer.zero_grad(set_to_none=True)
                self._body()
        torch.cuda.current_stream().wait_stream(side)
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._body()
        _restore(model, self.optimizer, saved)
        self.captures += 1

    def _release(self) -> None:
        # The old graph's replays must be over before its memory pool goes back to the allocator.
        torch.cuda.current_stream().synchronize()
        self.graph, self.x, self.y, self.loss = None, None, None, None
        self.optimizer.zero_grad(set_to_none=True)  # gradients live in the old graph's pool

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
        if self.graph is not None and (x.shape != self.x.shape or y.shape != self.y.shape):
            self._release()
        if self.graph is None:
            self.lr.fill_(lr)
            self._capture(x, y)
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)
        self.lr.fill_(lr)
        self.graph.replay()
        return self.loss


def _total(loss: torch.Tensor) -> torch.Tensor:
    """What is minimised: the loss, or the sum of a pack's per-member losses (each member's
    weights get their own loss's gradient, as in one-by-one training)."""
    return loss if loss.dim() == 0 else loss.sum()


@torch.no_grad()
def _snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    tensors = {id(t): t.detach().clone() for t in (*model.parameters(), *model.buffers())}
    state = {id(p): {k: v.detach().clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in optimizer.state.items()}
    return {"tensors": tensors, "state": state}


@torch.no_grad()
def _restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Undo the warm-up in place (the graph holds these very tensors). Optimizer state that the
    warm-up created starts at zero: a momentum buffer or Adam moment of zero, with Adam's step
    count at zero, updates exactly as a fresh one does."""
    for t in (*model.parameters(), *model.buffers()):
        t.copy_(saved["tensors"][id(t)])
    for p, s in optimizer.state.items():
        before = saved["state"].get(id(p))
        for k, v in s.items():
            if torch.is_tensor(v):
                v.copy_(before[k]) if before is not None else v.zero_()
