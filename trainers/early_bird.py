"""Early-bird tickets (You et al., ICLR 2020): detecting when the channel mask stops changing.

As the reference code (GATECH-EIC/Early-Bird-Tickets, main.py) does it, which is stricter than
the paper's wording, and named so:
- mask: one score per channel of `groups`' channel groups (trainers/structure.py), concatenated in
  group order (one global ranking): |gamma| of the BatchNorm after the channel's convolution,
  and for a group of several producers (groups: coupled, channels that meet at a residual add)
  the sum of their |gamma| (trainers.methods.channels.bn_gamma), so a coupled channel is ranked
  once, by its summed scales, not each layer's scale on its own as the reference (which has no
  coupled groups) does; t = sorted(scores)[int(C * p)] and a channel is kept when its score > t
  (strict: channels tied at t go too, so int(C * p) + 1 or more are removed);
- distance: normalised Hamming distance, 1 - #{m_i == m_j} / C;
- detector: at the start of each epoch the newest mask is pushed on a FIFO of `queue` masks;
  once the FIFO is full, a ticket is detected when the newest mask is within `threshold` of
  EVERY older mask in it (so never before `queue - 1` epochs of training).
The strict threshold is expressed through `trainers.pruning.remove_smallest` (the count is the
number of scales at or below t), so this method ends in the one selector like every other.
"""
from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from trainers.early_bird_files import DISTANCES_FILE, SCALES_FILE, detection_file, mask_file, weights_file  # noqa: F401
from trainers.pruning import remove_smallest


def reference_mask(scales: torch.Tensor, fraction: float) -> torch.Tensor:
    """Kept channels: |gamma| > sorted(|gamma|)[int(C * fraction)] (the reference's rule)."""
    scales = scales.detach().abs().to(torch.float64).reshape(-1)
    c = scales.numel()
    k = int(c * fraction)
    if not 0 <= k < c:
        raise ValueError(f"early_bird.fractions: {fraction} of {c} channels leaves none")
    t = torch.sort(scales).values[k]
    count = int((scales <= t).count_nonzero())
    return remove_smallest(scales.clone(), torch.ones(c, dtype=torch.bool), count)


def mask_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normalised Hamming distance between two flat bool masks of one length."""
    if a.shape != b.shape:
        raise ValueError(f"masks of different shapes: {tuple(a.shape)} and {tuple(b.shape)}")
    return 1.0 - int((a == b).count_nonzero()) / a.numel()


@dataclass
class Detector:
    """One fraction's detector; `push` once per epoch start, in order."""

    fraction: float
    queue: int = 5
    threshold: float = 0.1
    masks: deque = field(default_factory=deque)
    detected_at: int | None = None  # the epoch index of the push that fired (trained that many epochs)
    distances: list[float] | None = None  # newest vs each older mask at detection, oldest first

    def push(self, epoch: int, mask: torch.Tensor) -> bool:
        """Record the mask of the start of `epoch`; True the first time a ticket is detected."""
        self.masks.append(mask.clone())
        if len(self.masks) > self.queue:
            self.masks.popleft()
        if self.detected_at is not None or len(self.masks) < self.queue:
            return False
        newest = self.masks[-1]
        dists = [mask_distance(newest, old) for old in list(self.masks)[:-1]]
        if all(d <= self.threshold for d in dists):
            self.detected_at, self.distances = epoch, dists
            return True
        return False


def distance_matrix(masks: list[torch.Tensor]) -> list[list[float]]:
    """Pairwise distances of the per-epoch masks (the paper's figure)."""
    return [[mask_distance(a, b) for b in masks] for a in masks]


# ---- the search: what a search job does at each epoch start -----------------------------------


class Search:
    """The detectors of one search job. `at_epoch_start` is called by the training loop at every
    iteration that starts an epoch; a detection writes the fraction's mask (a parameter mask, as
    mask.pt: for channels expanded over filters, biases, BatchNorm and input slices), the
    weights at that point, and eb_<p>.json. `finish` writes what never fired (the mask at the end
    of training, `detected: false`) and the score trajectory."""

    def __init__(self, cfg, model: nn.Module, iters_per_epoch: int, out_dir: str, write: bool = True):
        from trainers import structure
        from trainers.pruning import prunable_names

        self.cfg, self.ipe, self.out = cfg, int(iters_per_epoch), out_dir
        self.write = write  # on N ranks every rank detects alike; rank 0 alone writes the files
        for p in cfg.fractions:
            if not 0 < p < 1:
                raise ValueError(f"early_bird.fractions: each must be in (0, 1), got {p}")
        self.detectors = [Detector(float(p), cfg.queue, cfg.threshold) for p in cfg.fractions]
        self.records: dict[float, dict] = {}
        self.trajectory: list[torch.Tensor] = []
        self.shapes = {n: tuple(t.shape) for n, t in model.named_parameters()}
        if cfg.kind == "channel":
            self.groups = structure.channel_groups(model, cfg.groups, cfg.ignore)
            if not all(g.norms for g in self.groups):
                raise ValueError("early_bird.kind: channel needs a BatchNorm after every pruned convolution")
        else:
            self.names = prunable_names(model, cfg.ignore)

    # state for checkpoints (plain tensors, lists and numbers: torch.load(weights_only=True))
    def state(self) -> dict:
        return {
            "queues": [list(d.masks) for d in self.detectors],
            "detected": [[d.detected_at, d.distances] for d in self.detectors],
            "records": {repr(p): r for p, r in self.records.items()},
            "trajectory": list(self.trajectory),
        }

    def load_state(self, st: dict) -> None:
        for d, q, (at, dist) in zip(self.detectors, st["queues"], st["detected"]):
            d.masks = deque(q)
            d.detected_at, d.distances = at, dist
        self.records = {float(p): r for p, r in st["records"].items()}
        self.trajectory = list(st["trajectory"])

    def scores(self, model: nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        if self.cfg.kind == "channel":
            from trainers.methods.channels import bn_gamma

            return torch.cat([bn_gamma(params, g) for g in self.groups])
        return torch.cat([params[n].detach().abs().reshape(-1).to("cpu", torch.float64) for n in self.names])

    @property
    def done(self) -> bool:
        return all(d.detected_at is not None for d in self.detectors)

    def at_epoch_start(self, it: int, model: nn.Module) -> bool:
        """Push this epoch's masks; True when the search should stop here."""
        if it % self.ipe:
            return False
        epoch = it // self.ipe
        scores = self.scores(model)
        if self.cfg.kind == "channel":
            self.trajectory.append(scores.to(torch.float32))
        for d in self.detectors:
            if d.detected_at is None and d.push(epoch, reference_mask(scores, d.fraction)):
                self._save(d, it, model, scores, detected=True)
        return self.cfg.stop == "at_detection" and self.done

    def finish(self, it: int, model: nn.Module) -> list[dict]:
        scores = self.scores(model)
        for d in self.detectors:
            if d.fraction not in self.records:
                self._save(d, it, model, scores, detected=False)
        if self.trajectory:
            from trainers import checkpoint

            checkpoint.save({"scores": torch.stack(self.trajectory)}, os.path.join(self.out, SCALES_FILE))
            matrices = {repr(float(p)): distance_matrix([reference_mask(s, p) for s in self.trajectory])
                        for p in self.cfg.fractions}
            checkpoint.save_json(matrices, os.path.join(self.out, DISTANCES_FILE))
        return [self.records[float(p)] for p in self.cfg.fractions]

    def _save(self, d: Detector, it: int, model: nn.Module, scores: torch.Tensor, detected: bool) -> None:
        from trainers import checkpoint, structure
        from trainers.pruning import density, full_mask

        keep = reference_mask(scores, d.fraction)
        if self.cfg.kind == "channel":
            parts = torch.split(keep, [g.size for g in self.groups])
            alive = {}
            for g, part, s in zip(self.groups, parts, torch.split(scores, [g.size for g in self.groups])):
                a = part.clone()
                if not a.any():  # the reference keeps one channel of an emptied layer (cfg.append(1))
                    a[int(s.numel() - 1 - torch.argmax(s.flip(0)))] = True
                alive[g.name] = a
            mask = full_mask(model, self.cfg.ignore)
            for name, part in structure.expand(self.groups, alive, self.shapes).items():
                mask[name] = mask[name] & part if name in mask else part
            kept = sum(int(a.count_nonzero()) for a in alive.values())
        else:
            sizes = [math.prod(self.shapes[n]) for n in self.names]
            mask = {n: m.reshape(self.shapes[n]) for n, m in zip(self.names, torch.split(keep, sizes))}
            kept = int(keep.count_nonzero())
        weights = {n: t for n, t in mask.items() if n.endswith("weight") and len(t.shape) > 1}
        record = {
            "fraction": d.fraction,
            "detected": detected,
            "detect_epoch": d.detected_at if detected else None,
            "detect_iter": it,
            "distances": list(d.distances) if detected else [],
            "channels_kept": kept,
            "density": density(weights),
        }
        self.records[d.fraction] = record
        if self.write:
            checkpoint.save(mask, os.path.join(self.out, mask_file(d.fraction)))
            checkpoint.save(checkpoint.state_dict_cpu(model), os.path.join(self.out, weights_file(d.fraction)))
            checkpoint.save_json(record, os.path.join(self.out, detection_file(d.fraction)))
