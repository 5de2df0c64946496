"""The planner: graph shape, ids (equal work = equal id), counts against a hand formula."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import time
from pathlib import Path

import pytest

from orchestrator.jobid import canonical_json, job_id
from orchestrator.planner import plan, required_outputs, summarize
from orchestrator.spec import validate_spec
from trainers.jobs import TrainJob

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))

BASE = {
    "name": "graph",
    "model": "mlp_300_100",
    "data": {"name": "digits"},
    "train": {"iterations": 400, "batch_size": 64, "schedule": {"name": "step", "milestones": [200, 300]}},
    "pruning": {
        "fraction": 0.5,
        "levels": 3,
        "retrain": ["rewind", "lr_rewind", "finetune"],
        "controls": ["random_prune", "random_reinit"],
    },
    "sweep": {
        "replicates": 2,
        "rewind_iters": [0, 50],
        "data_seed": 0,
        "branch": {"seeds": [0, 1, 2], "levels": [0, 2], "num_alphas": 5},
    },
}


def make(**changes):
    """BASE with dotted-path changes, e.g. make(**{"pruning.levels": 4})."""
    d = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = d
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return validate_spec(d)


def expected_counts(R, ks, L, families, reinit, seeds, ds, branch_levels):
    """Jobs by hand: dense + levels x lineages + branch children + pairs."""
    K, B, S = len(ks), len(branch_levels), len(seeds)
    dense = R
    levels = R * K * L * (families + reinit)
    new_seeds = len([s for s in seeds if s != ds])
    children = R * K * B * new_seeds
    if 0 in branch_levels and ds in seeds:  # level 0, lineage seed: a new job unless k == 0 (the dense run)
        children += R * len([k for k in ks if k != 0])
    pairs = R * K * B * S * (S - 1) // 2
    return dense + levels + children, pairs


def test_counts_equal_hand_formula():
    p = plan(make())
    train, pairs = expected_counts(R=2, ks=[0, 50], L=3, families=4, reinit=1, seeds=[0, 1, 2], ds=0, branch_levels=[0, 2])
    assert p.by_kind() == {"train": train, "interpolate": pairs}
    s = summarize(p)
    assert s["dense_runs"] == 2 and s["pairs"] == pairs and s["jobs"] == train + pairs
    assert s["lineages"] == 2 * 2 * 5  # (replicate, k) x (rewind, lr_rewind, finetune, random_prune, reinit)
    by_level = {row["level"]: row for row in s["levels"]}
    # level 2: 5 families x 4 lineages + 2 new children x 4 (seed 0 is the level job itself)
    assert by_level[2]["train"] == 5 * 4 + 2 * 4 and by_level[2]["interpolate"] == 3 * 4
    assert by_level[1]["interpolate"] == 0
    assert s["training_iterations"] == sum(
        j.spec.stop_iter - j.spec.start_iter for j in p.jobs.values() if j.kind == "train"
    )


def test_one_dense_run_per_replicate_shared_by_every_k():
    p = plan(make(**{"sweep.rewind_iters": [0, 50, 100, 200]}))
    dense = [j for j in p.jobs.values() if j.kind == "train" and j.spec.prune is None and not j.inputs]
    assert len(dense) == 2
    by_seed = {j.spec.init_seed: j for j in dense}
    assert all(j.spec.save_iters == (0, 50, 100, 200) for j in dense)
    level1 = [j for j in p.jobs.values() if j.meta.level == 1 and j.meta.retrain == "rewind" and j.meta.prune_strategy == "magnitude_global"]
    assert len(level1) == 2 * 4
    for j in level1:
        dense_id = by_seed[j.spec.init_seed].id
        assert j.inputs["rewind_weights"] == (dense_id, f"w_{j.spec.start_iter}.pt")
        assert j.inputs["parent_weights"] == (dense_id, "weights.pt")
    assert required_outputs(p)[by_seed[0].id] >= {"w_0.pt", "w_50.pt", "w_100.pt", "w_200.pt", "weights.pt", "mask.pt"}


def test_parents_precede_children_and_inputs_are_in_the_plan():
    p = plan(make())
    seen = set()
    for jid, job in p.jobs.items():
        assert job.id == jid
        assert set(job.parents) == {pid for pid, _ in job.inputs.values()}
        assert all(parent in seen for parent in job.parents), "parent after child"
        seen.add(jid)
    for job in p.jobs.values():
        if job.kind == "interpolate":
            a, b = job.meta.pair
            assert p.jobs[a].meta.level == p.jobs[b].meta.level == job.meta.level
            assert p.jobs[a].spec.data_seed < p.jobs[b].spec.data_seed  # seed order: stable pair ids


def test_ids_are_the_hash_of_the_description_by_a_second_code_path():
    p = plan(make())
    for job in p.jobs.values():
        plain = dataclasses.asdict(job.spec)
        if isinstance(job.spec, TrainJob):
            plain.pop("save_iters")  # snapshots are not part of a job's identity
            plain.pop("channel_report")  # nor is the measure a channel density is counted by
            # fields added later are left out at their defaults (jobid._OMITTED_AT_DEFAULT)
            for name, default in (("at_init", None), ("reinit_keep_signs", False)):
                if plain[name] == default:
                    plain.pop(name)
            if plain["prune"] is not None and plain["prune"]["criterion"] == "magnitude":
                plain["prune"].pop("criterion")
            for field, default in (("early_bird", None), ("start_at_detection", False), ("transfer", None)):
                if plain[field] == default:
                    plain.pop(field)
        # fields added later are left out at the default that reproduces the earlier jobs
        if plain["train"].get("l1_gamma") == 0.0:
            plain["train"].pop("l1_gamma")
        prune = plain.get("prune") or {}
        for field, default in (("granularity", "weight"), ("channel_score", "l1_filter"), ("groups", "block_internal"),
                               ("rank_batches", 5), ("rank_batch_size", 128), ("layer_fractions", ())):
            if prune.get(field) == default:
                prune.pop(field)
        for name, default in (("bn_sync", "global"), ("bn_batch", None), ("bn_scale_init", None)):  # left out at their defaults
            if plain["train"].get(name) == default:
                plain["train"].pop(name)
        text = canonical_json([job.kind, plain, {r: list(v) for r, v in job.inputs.items()}])
        assert job.id == hashlib.sha256(text.encode()).hexdigest()[: len(job.id)]
    assert job_id("train", TrainJob(train=job.spec.train, init_seed=0, data_seed=0), {}) == job_id(
        "train", TrainJob(train=job.spec.train, init_seed=0, data_seed=0, save_iters=(5,)), {}
    )


def test_branch_child_with_lineage_seed_is_the_level_job():
    p = plan(make())
    for job in p.jobs.values():
        if job.kind != "interpolate":
            continue
        a = p.jobs[job.meta.pair[0]]
        k, level = job.meta.rewind_iter, job.meta.level
        if a.spec.data_seed == 0:  # the lineage's own seed
            if level == 0 and k == 0:
                assert a.spec.prune is None and not a.inputs  # the dense run itself
            elif level == 0:
                assert a.meta.role == "branch" and a.spec.start_iter == k
            else:
                assert a.meta.role == "level" and a.meta.level == level and a.meta.retrain == "rewind"
    # Level-0 children start from W_k with the dense mask.
    child = next(j for j in p.jobs.values() if j.meta.role == "branch" and j.meta.level == 0 and j.meta.rewind_iter == 50)
    dense = child.inputs["rewind_weights"][0]
    assert child.inputs == {"rewind_weights": (dense, "w_50.pt"), "parent_mask": (dense, "mask.pt")}
    assert child.spec.prune is None and child.spec.start_iter == 50


def test_families_and_controls_are_distinct_and_wired_as_documented():
    p = plan(make())
    jobs = list(p.jobs.values())

    def find(retrain, strategy, k, level, seed=0):
        (job,) = [
            j for j in jobs
            if j.meta.role == "level" and j.meta.retrain == retrain and j.meta.prune_strategy == strategy
            and j.meta.rewind_iter == k and j.meta.level == level and j.spec.init_seed == seed
        ]
        return job

    rw1, lr1 = find("rewind", "magnitude_global", 0, 1), find("lr_rewind", "magnitude_global", 0, 1)
    assert rw1.id != lr1.id and "rewind_weights" not in lr1.inputs and lr1.spec.retrain == "lr_rewind"
    ft = find("finetune", "magnitude_global", 50, 2)
    # finetune_lr defaults to the schedule's final rate (Renda et al.): lr 0.1 x 0.1 x 0.1 after
    # BASE's milestones 200 and 300 of 400 iterations (issue 21, item 12; was a fixed 1e-3).
    assert ft.spec.retrain == "finetune" and ft.spec.finetune_lr == pytest.approx(1e-3) and ft.spec.start_iter == 50
    assert ft.spec.stop_iter == 400
    assert p.jobs[ft.meta.parent_job_id].meta.retrain == "finetune"  # its own chain
    assert rw1.spec.finetune_lr == TrainJob.finetune_lr  # finetune_lr is not part of other jobs' ids
    for level in (1, 2, 3):
        rp = find("rewind", "random", 50, level)
        assert rp.spec.prune.strategy == "random" and "rewind_weights" in rp.inputs
        ri = find("reinit", "magnitude_global", 50, level)
        rewind_prev = find("rewind", "magnitude_global", 50, level - 1) if level > 1 else None
        expected_parent = rewind_prev.id if rewind_prev else p.jobs[rw1.meta.parent_job_id].id
        # the reinit control prunes the rewind lineage's level l-1 network: the same mask m_l
        assert ri.inputs == {"parent_weights": (expected_parent, "weights.pt"), "parent_mask": (expected_parent, "mask.pt")}
        assert ri.spec.reinit_seed is not None and ri.spec.prune == rw1.spec.prune
    seeds = {find("rewind", "random", 0, lev).spec.prune_seed for lev in (1, 2, 3)}
    assert len(seeds) == 3  # a fresh random mask draw at every level
    assert len({find("reinit", "magnitude_global", 0, lev).spec.reinit_seed for lev in (1, 2, 3)}) == 3


def test_planned_density_follows_ceil_of_remaining():
    from trainers.models import model_shapes

    spec = make(**{"pruning.fraction": 0.3, "pruning.levels": 6})
    shapes = model_shapes("mlp_300_100", (64,), 10)
    total = sum(math.prod(s) for n, s in shapes.items() if n.endswith("weight") and len(s) == 2)
    remaining = [total]
    for _ in range(6):
        remaining.append(remaining[-1] - (-(-3 * remaining[-1] // 10)))  # ceil(0.3 r), in integers
    for job in plan(spec).jobs.values():
        assert job.meta.density == remaining[job.meta.level] / total


def test_demo_config_densities_and_size():
    from orchestrator.spec import load_spec

    spec = load_spec(str(Path(CONFIGS[0]).parent / "demo.yaml"))
    p = plan(spec)
    s = summarize(p)
    densities = [row["density"] for row in s["levels"]]
    f = spec.pruning.fraction
    for level, d in enumerate(densities):
        assert d == pytest.approx((1 - f) ** level, abs=1e-4)  # ceil moves it by < 1 weight per level
    assert densities[-1] < 0.2
    assert 25 <= p.by_kind()["train"] <= 60 and max(j.spec.stop_iter for j in p.jobs.values() if j.kind == "train") <= 500
    assert s["pairs"] >= 4


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_plans(path):
    from orchestrator.spec import load_specs

    for spec in load_specs(str(path)):  # a grid config: every point
        p = plan(spec)
        s = summarize(p)
        assert s["jobs"] == len(p.jobs) > 0 and s["dense_runs"] == len(spec.init_seeds)
        assert s["levels"][-1]["level"] == spec.pruning.levels


@pytest.mark.parametrize(
    "growth",
    [
        {"pruning.levels": 5},
        {"sweep.branch.seeds": [0, 1, 2, 3]},
        {"sweep.branch.levels": [0, 1, 2, 3]},
        {"sweep.rewind_iters": [0, 50, 100]},
        {"sweep.replicates": 3},
        {"pruning.retrain": ["rewind", "finetune"], "pruning.controls": ["random_prune", "random_reinit"]},
    ],
)
def test_growing_the_sweep_keeps_every_old_id(growth):
    small = {"pruning.retrain": ["rewind"], "pruning.controls": []}
    old, new = set(plan(make(**small)).jobs), set(plan(make(**{**small, **growth})).jobs)
    assert old < new


def test_ids_change_with_what_changes_the_output_only():
    base = set(plan(make()).jobs)
    same = make(
        name="another_name",
        store="/elsewhere",
        resources={"gpus": 1, "cpus": 4},
        scheduler={"max_attempts": 7, "priority": "breadth_first", "checkpoint_every_seconds": 5},
        tracking={"wandb": "disabled"},
    )
    assert set(plan(same).jobs) == base
    for change in (
        {"train.optimizer": {"lr": 0.07}},
        {"sweep.data_seed": 5},
        {"train.iterations": 500},
        {"data.augment": False},
    ):
        assert not (set(plan(make(**change)).jobs) & base), change
    # a different k: the dense runs stay, that k's lineages are new
    moved = plan(make(**{"sweep.rewind_iters": [0, 60]}))
    shared = set(moved.jobs) & base
    assert shared and all(moved.jobs[j].meta.rewind_iter == 0 for j in shared)
    assert any(j.meta.rewind_iter == 60 for j in moved.jobs.values())


def test_priorities():
    spec = make()
    p = plan(spec)
    T, L = 400, 3
    dense = [j for j in p.jobs.values() if j.spec.__class__ is TrainJob and j.spec.prune is None and not j.inputs]
    # longest path below a dense run: itself, L levels of the k = 0 lineage, then the random
    # pruning control of level L (it takes IMP's level-L mask)
    assert all(j.priority == T + (L + 1) * T for j in dense)
    for job in p.jobs.values():
        if job.kind == "train" and job.meta.level == L and job.meta.prune_strategy == "random":
            assert job.priority == job.spec.stop_iter - job.spec.start_iter  # a leaf
    bf = plan(make(**{"scheduler": {"priority": "breadth_first"}}))
    assert all(j.priority == -j.meta.level for j in bf.jobs.values())


def test_large_sweep_plans_fast_and_counts_match():
    spec = make(
        **{
            "sweep.replicates": 10,
            "sweep.rewind_iters": list(range(0, 100, 10)),
            "pruning.levels": 20,
            "pruning.fraction": 0.2,
            "sweep.branch": {"seeds": [0, 1, 2, 3], "levels": "all", "num_alphas": 5},
        }
    )
    t0 = time.perf_counter()
    p = plan(spec)
    elapsed = time.perf_counter() - t0
    train, pairs = expected_counts(R=10, ks=list(range(0, 100, 10)), L=20, families=4, reinit=1, seeds=[0, 1, 2, 3], ds=0, branch_levels=range(21))
    assert p.by_kind() == {"train": train, "interpolate": pairs}
    assert train + pairs > 20_000
    assert elapsed < 30, f"planning {len(p.jobs)} jobs took {elapsed:.1f} s"


def test_plan_time_errors_name_the_field():
    from orchestrator.spec import SpecError

    with pytest.raises(SpecError) as info:
        plan(make(**{"pruning.ignore": ["fcx.weight"]}))  # a typo would silently prune the classifier
    assert info.value.field == "pruning.ignore" and "fcx.weight" in info.value.reason
    with pytest.raises(SpecError) as info:
        plan(make(model="resnet18"))  # image model, flat digits
    assert info.value.field == "model" and "digits" in info.value.reason


def test_fast_encoder_writes_every_scalar_as_json_does():
    """jobid's scalar fast path against json.dumps itself: escapes, unicode, signs, exponents,
    -0.0, big ints, bools (an int subclass) and None; nan is refused like json's allow_nan=False."""
    from orchestrator.jobid import _Encoder, _plain

    @dataclasses.dataclass(frozen=True)
    class Scalars:
        s: str = 'a"b\\c\n\u00e9\u2603'
        i: int = -12345678901234567890
        f: float = 0.30000000000000004
        g: float = 1e-05
        z: float = -0.0
        b: bool = True
        n: None = None
        t: tuple = (1, 2.5, "x", False)

    enc = _Encoder()
    for obj in (Scalars(), Scalars(s="", i=0, f=1e300, g=-2.5e-300, z=0.0, b=False)):
        assert enc(obj) == canonical_json(_plain(obj))
    with pytest.raises(ValueError):
        enc(Scalars(f=float("nan")))


def test_the_floor_of_one_weight_per_tensor_names_the_deepest_allowed_level():
    """One check serves weights and channels (orchestrator/floor.py). mlp_300_100 on digits:
    64*300 + 300*100 + 100*10 = 50,200 prunable weights in 3 tensors."""
    from orchestrator.floor import check_floor
    from orchestrator.spec import SpecError

    sizes = {"a": 8, "b": 4}
    spec = make(**{"pruning.strategy": "magnitude_layerwise", "pruning.fraction": 0.5, "pruning.levels": 2})
    assert check_floor(sizes, spec, "weight", "prunable tensor") == [12, 6, 3]  # a: 8 -> 4 -> 2, b: 4 -> 2 -> 1
    deep = make(**{"pruning.strategy": "magnitude_layerwise", "pruning.fraction": 0.5, "pruning.levels": 3})
    with pytest.raises(SpecError) as e:
        check_floor({"a": 4, "b": 1}, deep, "channel", "group")
    assert e.value.field == "pruning.levels" and "level 1 leaves no channel in b; at most 0 levels" in str(e.value)
    glob = make(**{"pruning.fraction": 0.9, "pruning.levels": 5})
    with pytest.raises(SpecError) as e:
        plan(glob)  # 50,200 -> 5,020 -> 502 -> 50 -> 5 -> 0: level 5 leaves 0 weights for 3 tensors
    assert "level 5 leaves 0 weights for 3 prunable tensors; at most 4 levels" in str(e.value)
