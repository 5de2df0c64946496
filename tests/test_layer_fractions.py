"""pruning.layer_fractions: a tensor's own rate under magnitude_layerwise (Frankle & Carbin's
LeNet: the output layer at half the hidden layers' rate). Real masks from pruning.prune against
an independent count (ceil(rate x alive), exact decimals) and the planner's densities."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from conftest import DEMO
from orchestrator.planner import plan, planned_densities
from orchestrator.spec import SpecError, load_spec
from trainers.jobs import PruneConfig
from trainers.pruning import prune


def test_layerwise_levels_use_each_tensors_own_rate():
    gen = torch.Generator().manual_seed(0)
    weights = {"hidden.0.weight": torch.randn(30, 64, generator=gen), "hidden.2.weight": torch.randn(10, 30, generator=gen),
               "fc.weight": torch.randn(10, 10, generator=gen)}
    mask = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    cfg = PruneConfig(strategy="magnitude_layerwise", fraction=0.2, layer_fractions=(("fc.*", 0.1),))
    alive = {n: m.numel() for n, m in mask.items()}
    for _ in range(4):
        mask = prune(weights, mask, cfg)
        rate = {n: Fraction("0.1") if n.startswith("fc.") else Fraction("0.2") for n in alive}
        alive = {n: a - math.ceil(rate[n] * a) for n, a in alive.items()}
        assert {n: int(m.sum()) for n, m in mask.items()} == alive
        # the kept weights are the tensor's largest (layerwise magnitude)
        w = weights["fc.weight"].abs()
        assert w[mask["fc.weight"]].min() >= w[~mask["fc.weight"]].max()


def test_planner_densities_follow_the_layer_fractions():
    sets = ["pruning.strategy=magnitude_layerwise", "pruning.fraction=0.2", "pruning.levels=3",
            "pruning.layer_fractions={fc.weight: 0.1}", "pruning.at_init=null", "sweep.branch.seeds=[]"]
    spec = load_spec(DEMO, sets)
    sizes = {"hidden.0.weight": 64 * 300, "hidden.2.weight": 300 * 100, "fc.weight": 100 * 10}
    counts = dict(sizes)
    expected = [1.0]
    for _ in range(3):
        counts = {n: c - math.ceil((Fraction("0.1") if n == "fc.weight" else Fraction("0.2")) * c) for n, c in counts.items()}
        expected.append(sum(counts.values()) / sum(sizes.values()))
    assert planned_densities(spec) == pytest.approx(expected, rel=0, abs=1e-15)  # ratios of the same integers
    without = plan(load_spec(DEMO, sets[:3] + sets[4:]))
    assert not {j.id for j in plan(spec).jobs.values() if j.meta.level > 0} & set(without.jobs)


@pytest.mark.parametrize("extra, field", [
    (["pruning.layer_fractions={fc.weight: 0.1}"], "pruning.layer_fractions"),  # the demo's strategy is global
    (["pruning.strategy=magnitude_layerwise", "pruning.at_init=null", "pruning.layer_fractions={conv*: 0.1}"],
     "pruning.layer_fractions.conv*"),
    (["pruning.strategy=magnitude_layerwise", "pruning.at_init=null", "pruning.layer_fractions={fc.weight: 1.5}"],
     "pruning.layer_fractions.fc.weight"),
])
def test_bad_layer_fractions_name_the_field(extra, field):
    with pytest.raises(SpecError) as e:
        plan(load_spec(DEMO, extra))
    assert e.value.field == field, str(e.value)
