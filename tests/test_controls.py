"""The random-pruning control keeps IMP's per-layer counts at every level (DESIGN.md).

A real lineage (digits, LeNet-300-100, fraction 0.3, four levels) is planned by the planner and
run job by job through the worker (no Ray: JobRunner is a plain class). IMP's per-layer counts
at level l are then recomputed independently, in numpy, from the stored level l-1 weights and
mask, and compared with the masks IMP and the control actually trained with.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from conftest import DEMO
from orchestrator.planner import plan
from orchestrator.spec import load_spec
from orchestrator.store import Store
from orchestrator.tracking import resolve_settings
from orchestrator.worker import JobRunner, WorkerContext

FRACTION = 0.3
LEVELS = 4


def _independent_counts(weights: dict, mask: dict, strategy: str) -> dict[str, int]:
    """Survivors per layer after one magnitude step, by a full sort (not pruning.py's kthvalue)."""
    names = list(mask)
    mags = {n: np.abs(weights[n].numpy().astype(np.float64)).ravel() for n in names}
    alive = {n: mask[n].numpy().ravel() for n in names}

    def remove(count_from: dict[str, np.ndarray]) -> dict[str, int]:
        # (magnitude, tensor order, position): the documented tie rule
        entries = sorted((m, i, j) for i, n in enumerate(names) for j, m in enumerate(count_from[n]) if alive[n][j])
        total = len(entries)
        k = math.ceil(Fraction(str(FRACTION)) * total)
        removed = {n: 0 for n in names}
        for _, i, _ in entries[:k]:
            removed[names[i]] += 1
        return {n: int(alive[n].sum()) - removed[n] for n in names}

    if strategy == "magnitude_global":
        return remove(mags)
    out = {}
    for n in names:  # layerwise: ceil(p * alive) from each tensor, whatever the magnitudes
        out[n] = int(alive[n].sum()) - math.ceil(Fraction(str(FRACTION)) * int(alive[n].sum()))
    return out


def _counts(mask: dict) -> dict[str, int]:
    return {n: int(m.sum()) for n, m in mask.items()}


@pytest.mark.parametrize("strategy", ["magnitude_global", "magnitude_layerwise"])
def test_random_control_has_imps_per_layer_counts_at_every_level(tmp_path, strategy):
    sets = [
        "train.iterations=12", "train.schedule.milestones=[6]", "train.eval_every=0",
        "train.eval_train_examples=64", f"pruning.levels={LEVELS}", f"pruning.fraction={FRACTION}",
        f"pruning.strategy={strategy}", "pruning.controls=[random_prune]", "sweep.replicates=1",
        "sweep.rewind_iters=[0]", "sweep.branch.seeds=[]", "tracking.wandb=disabled",
    ]
    p = plan(load_spec(DEMO, sets))
    store = Store(str(tmp_path / "store"))
    runner = JobRunner(WorkerContext(store_root=store.root, tracking=resolve_settings("disabled", "x", None, None)))
    for job in p.jobs.values():  # topological order
        record = runner.run(job, 1)
        store.write_done(job.id, record)

    def mask_of(job) -> dict:
        return torch.load(store.local_path(Store.artifact(job.id, "mask.pt")), weights_only=True)

    levels = {(j.meta.prune_strategy, j.meta.level): j for j in p.jobs.values() if j.kind == "train"}
    imp = {lev: levels[(strategy, lev)] for lev in range(LEVELS + 1)}
    rnd = {lev: levels[("random", lev)] for lev in range(1, LEVELS + 1)}
    for lev in range(1, LEVELS + 1):
        prev = imp[lev - 1]
        weights = torch.load(store.local_path(Store.artifact(prev.id, "weights.pt")), weights_only=True)
        expected = _independent_counts(weights, mask_of(prev), strategy)
        assert _counts(mask_of(imp[lev])) == expected, f"IMP level {lev}"
        control = mask_of(rnd[lev])
        assert _counts(control) == expected, f"random control level {lev}"
        assert any(not torch.equal(control[n], mask_of(imp[lev])[n]) for n in control)
        # the control trained with its mask: pruned weights stayed exactly zero
        final = torch.load(store.local_path(Store.artifact(rnd[lev].id, "weights.pt")), weights_only=True)
        assert all(bool((final[n][~control[n]] == 0).all()) for n in control)
