"""sweep.branch.noise_floor: a pair of children per branch point that differ only by kernel
noise. The plan adds exactly that pair (and its interpolation) and changes no other job; on a
CPU, where every kernel is deterministic, the pair's weights are bitwise equal and its barrier
is exactly 0, which the analysis reports beside the data-order barrier."""
from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import torch

from conftest import DEMO, tiny_args
from orchestrator.cli import main
from orchestrator.planner import plan
from orchestrator.spec import load_spec
from orchestrator.store import Store

NOISE = "sweep.branch.noise_floor=true"


def _plan(*extra: str):
    return plan(load_spec(DEMO, [a for a in tiny_args(*extra) if a != "--set"]))


def test_the_plan_adds_one_noisy_pair_per_branch_point_and_changes_nothing_else():
    base, noisy = _plan(), _plan(NOISE)
    assert set(base.jobs) < set(noisy.jobs)  # only added work: every other id is unchanged
    added = [noisy.jobs[j] for j in set(noisy.jobs) - set(base.jobs)]
    twins = [j for j in added if j.kind == "train"]
    pairs = [j for j in added if j.kind == "interpolate"]
    # tiny demo: 1 replicate x k in {0, 10} x branch levels {0, 2} = 4 branch points
    points = Counter((j.meta.rewind_iter, j.meta.level) for j in twins)
    assert points == {(0, 0): 2, (0, 2): 2, (10, 0): 2, (10, 2): 2}
    assert len(pairs) == 4 and {j.meta.role for j in twins} == {"noise"}
    seeds = sorted(load_spec(DEMO, [a for a in tiny_args() if a != "--set"]).sweep.branch.seeds)
    for pair in pairs:
        a, b = (noisy.jobs[pair.meta.pair[0]], noisy.jobs[pair.meta.pair[1]])
        assert a.id != b.id and {a.spec.noise_replica, b.spec.noise_replica} == {1, 2}
        assert a.spec.train.deterministic is False and b.spec.train.deterministic is False
        assert a.spec.data_seed == b.spec.data_seed == seeds[0] and a.inputs == b.inputs
    # each twin is the first seed's branch child (same description, same inputs) but for its
    # kernels and its tag
    children = {(j.spec, tuple(sorted(j.inputs.items()))) for j in base.jobs.values() if j.kind == "train"}
    cfg = next(j.spec.train for j in base.jobs.values() if j.kind == "train")
    for t in twins:
        assert (dataclasses.replace(t.spec, train=cfg, noise_replica=0), tuple(sorted(t.inputs.items()))) in children


def test_on_cpu_the_noise_pair_is_identical_and_its_barrier_zero(ray_session, tmp_path):
    store = tmp_path / "store"
    assert main(["run", DEMO, "--store", str(store), *tiny_args(NOISE, "tracking.wandb=disabled")]) == 0
    p = _plan(NOISE)
    runs = {r["job_id"]: r for r in Store(str(store)).read_table("runs", "demo").to_pylist()}
    noise = [j for j in runs.values() if j["role"] == "noise"]
    assert len(noise) == 8 and all(r["deterministic"] is True for r in noise)  # a CPU's kernels always are
    inst = Store(str(store)).read_table("instability", "demo").to_pylist()
    noise_pairs = [r for r in inst if runs[r["job_a"]]["role"] == "noise"]
    assert len(noise_pairs) == 4 * 2  # 4 pairs x 2 splits
    for r in noise_pairs:
        wa = torch.load(Path(store) / runs[r["job_a"]]["weights_path"], weights_only=True)
        wb = torch.load(Path(store) / runs[r["job_b"]]["weights_path"], weights_only=True)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        assert r["barrier"] == 0.0 and r["error_a"] == r["error_b"]
    from orchestrator.analysis import compute
    from orchestrator.analysis.read import INSTABILITY_COLUMNS, INTERPOLATION_COLUMNS, RUNS_COLUMNS

    s = Store(str(store))
    res = compute(s.read_table("runs", "demo").select(RUNS_COLUMNS), s.read_table("instability", "demo").select(INSTABILITY_COLUMNS),
                  s.read_table("interpolation", "demo").select(INTERPOLATION_COLUMNS), 0.02)
    floor = res.noise_floor.to_pylist()
    assert len(floor) == 4 * 2 and all(r["noise_barrier_max"] == 0.0 and r["noise_pairs"] == 1 for r in floor)
    assert all(r["data_order_pairs"] >= 1 for r in floor)  # the data-order barrier beside it
    assert res.n_pairs == sum(1 for j in p.jobs.values() if j.kind == "interpolate") - 4  # noise pairs kept apart
