"""Unstructured pruning methods behind one small interface: scores in, exact-count mask out.

A *scorer* maps `ScoreInputs` to `{prunable name: score tensor}` (same shapes as the weights,
on CPU, finite wherever the mask is alive). Higher scores are kept. Every method then ends in
`select`, which calls the one exact-count selector `trainers.pruning.remove_smallest` (ties go
by position, smaller flat index removed first), so counts are exactly the planned ones and a
weight that is already pruned is never revived, whatever score it got.

The interface (`ScoreInputs`, `select`) lives in base.py, which the scorers import, so that no
module of this package imports the package itself (no import circle). The registry is a plain
dict, name -> scorer:

- IMP's criteria (magnitude.py; Zhou et al. 2019, "Deconstructing Lottery Tickets"):
  `magnitude` |w_T| (large_final, today's IMP), `magnitude_increase` |w_T| - |w_k|.
- Pruning at initialization (at_init.py), scored on W_k before any training from k:
  `snip` (Lee et al., ICLR 2019), `grasp` and `grasp_abs` (Wang et al., ICLR 2020; the second is
  the |θ⊙Hg| variant of Frankle et al., ICLR 2021), `synflow` (Tanaka et al., NeurIPS 2020;
  iterative, so it selects itself round by round and returns the final mask as 0/1 scores),
  `magnitude_init` |W_k| and `random_init` (i.i.d. normal scores).

Structured (channel) methods live beside these: channels.py scores whole channels (`l1_filter`,
`bn_gamma`, `hrank`) and ends in the same selector, over channels instead of weights.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

from trainers.methods import at_init, magnitude
from trainers.methods.base import ScoreInputs, Scorer, select  # noqa: F401  (the interface, re-exported)
from trainers.pruning import Mask


METHODS: dict[str, Scorer] = {
    "magnitude": magnitude.large_final,
    "magnitude_increase": magnitude.magnitude_increase,
    "snip": at_init.snip,
    "grasp": at_init.grasp,
    "grasp_abs": at_init.grasp_abs,
    "synflow": at_init.synflow,
    "magnitude_init": at_init.magnitude_init,
    "random_init": at_init.random_init,
}
ITERATIVE = frozenset({"synflow"})  # scored again after each of `iterations` rounds
AT_INIT = ("snip", "grasp", "grasp_abs", "synflow", "magnitude_init", "random_init")
USES_DATA = frozenset({"snip", "grasp", "grasp_abs"})  # need the scoring batch (and bn_mode)


def round_counts(start: Sequence[int], keep: Sequence[int], r: int, n: int, schedule: str) -> list[int]:
    """Counts kept after round r of n (1..n) going from `start` to `keep` alive weights, per group:
    exponential: round(N * d^(r/n)) with d = keep / N (Synaptic-Flow's); linear: round(N - (N -
    keep) * r / n). The last round keeps exactly `keep`; no round keeps fewer."""
    out = []
    for n0, c in zip(start, keep):
        if r >= n or n0 == 0:
            out.append(int(c))
        elif schedule == "exponential":
            out.append(max(int(c), min(n0, round(n0 * math.exp(math.log(c / n0) * r / n)) if c > 0 else 0)))
        elif schedule == "linear":
            out.append(max(int(c), round(n0 - (n0 - c) * r / n)))
        else:
            raise ValueError(f"schedule must be exponential or linear, got {schedule!r}")
    return out


def compute_mask(method: str, inp: ScoreInputs, keep: Sequence[int], scope: str, invert: bool = False,
                 iterations: int = 1, schedule: str = "exponential") -> Mask:
    """The mask of `method` keeping exactly `keep` (see `select`) of `inp.mask`'s alive weights.
    An ITERATIVE method is scored again on the shrinking mask after each of `iterations` rounds;
    pruned weights stay pruned (select never revives them)."""
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; valid: {', '.join(METHODS)}")
    scorer = METHODS[method]
    if method not in ITERATIVE or iterations <= 1:
        return select(scorer(inp), inp.mask, keep, scope, invert)
    groups = [list(inp.mask)] if scope == "global" else [[n] for n in inp.mask]
    start = [sum(int(inp.mask[n].count_nonzero()) for n in g) for g in groups]
    mask = inp.mask
    for r in range(1, iterations + 1):
        counts = round_counts(start, keep, r, iterations, schedule)
        mask = select(scorer(replace(inp, mask=mask)), mask, counts, scope, invert)
    return mask
