"""Pruning at initialization and Zhou et al.'s criteria in the job graph, the Parquet rows and
`lth analyze`: exact counts, ids that cover the mask's inputs and leave old jobs alone, and
the method comparison tables against hand computations."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pytest

from orchestrator.experiment import config_hash
from orchestrator.jobid import job_payload
from orchestrator.planner import plan, prunable_sizes, summarize
from orchestrator.spec import SpecError, load_spec
from test_planner import make
from trainers.jobs import PruneConfig, TrainJob
from trainers.prune_counts import planned_layer_remaining, planned_remaining

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
AT_INIT = {"methods": ["snip", "synflow", "random_init"], "ablations": ["shuffle", "reinit", "invert"]}


def _digest(ids) -> str:
    return hashlib.sha256("".join(sorted(ids)).encode()).hexdigest()[:16]


def test_existing_configs_keep_their_ids_and_config_hash():
    # Computed on main before pruning at init existed (commit 7b6c8f0).
    spec = load_spec(str(CONFIGS / "cifar10_resnet20_lmc.yaml"))
    assert config_hash(spec) == "980dd821cb18c900"
    assert _digest(plan(spec).jobs) == "6efa9a0970416a6a"
    demo = plan(load_spec(str(CONFIGS / "demo.yaml")))  # the demo gained jobs; its old ones stay
    assert _digest(j.id for j in demo.jobs.values() if j.meta.role != "pai") == "dca4ee8062a0ed3e"
    payload = job_payload("train", TrainJob(train=demo.jobs[next(iter(demo.jobs))].spec.train, init_seed=0, data_seed=0), {})
    assert "at_init" not in payload and "reinit_keep_signs" not in payload and "criterion" not in payload


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_at_init_counts_equal_imps_planned_counts(scope):
    spec = make(**{"pruning.at_init": {**AT_INIT, "scope": scope}, "pruning.strategy": "magnitude_layerwise"
                   if scope == "layerwise" else "magnitude_global"})
    p = plan(spec)
    sizes = prunable_sizes(spec)
    totals = planned_remaining(sizes, spec.prune_config(), spec.pruning.levels)
    pai = [j for j in p.jobs.values() if j.meta.role == "pai"]
    assert len(pai) == len(spec.init_seeds) * 3 * spec.pruning.levels * 4
    imp = {(j.meta.replicate, j.meta.level): j.meta.density for j in p.jobs.values()
           if j.meta.role == "level" and j.meta.retrain == "rewind" and j.meta.rewind_iter == 0}
    for j in pai:
        keep = j.spec.at_init.keep
        if scope == "global":
            assert keep == (totals[j.meta.level],)
        else:
            assert list(keep) == planned_layer_remaining(sizes, spec.pruning.fraction, j.meta.level)
        assert sum(keep) == totals[j.meta.level]  # IMP's strategy matches the scope here
        assert j.meta.density == imp[(j.meta.replicate, j.meta.level)]  # row for row with IMP
        assert j.inputs == {"rewind_weights": (j.parents[0], "w_0.pt")}


def test_at_init_job_descriptions_cover_what_decides_the_mask_and_nothing_else():
    spec = make(**{"pruning.at_init": AT_INIT})
    jobs = [j for j in plan(spec).jobs.values() if j.meta.role == "pai" and j.meta.retrain == "rewind"]
    by = {j.spec.at_init.method: j.spec.at_init for j in jobs if j.meta.level == 1 and j.meta.replicate == 0}
    assert by["snip"].examples_per_class == 10 and by["snip"].iterations == 1 and by["snip"].temperature == 0.0
    assert by["synflow"].iterations == 100 and by["synflow"].examples_per_class == 0
    assert by["random_init"].seed != 0 and by["snip"].seed == 0
    # SynFlow's rounds change SynFlow's ids only; the scoring batch size changes SNIP's only
    more = {j.id for j in plan(make(**{"pruning.at_init": {**AT_INIT, "synflow": {"iterations": 50}}})).jobs.values()}
    old = {j.id: j.spec.at_init.method for j in jobs}
    assert {m for i, m in old.items() if i not in more} == {"synflow"}
    more = {j.id for j in plan(make(**{"pruning.at_init": {**AT_INIT, "scoring": {"examples_per_class": 5}}})).jobs.values()}
    assert {m for i, m in old.items() if i not in more} == {"snip"}
    # adding pruning at init keeps every other job's id
    base = set(plan(make()).jobs)
    assert base <= set(plan(spec).jobs)


def test_plan_counts_and_validation():
    s = summarize(plan(make(**{"pruning.at_init": {"methods": ["snip"], "ablations": ["invert"]}})))
    R, L = 2, 3
    assert s["at_init_jobs_by_method"] == {"snip": R * L, "snip+invert": R * L}
    assert s["by_role"]["pai"] == 2 * R * L
    with pytest.raises(SpecError) as e:
        make(**{"pruning.at_init": {"methods": ["snip"], "at_iters": [7]}})
    assert e.value.field == "pruning.at_init.at_iters[0]"
    with pytest.raises(SpecError) as e:
        make(**{"pruning.at_init": {"methods": ["snip", "snip"]}})
    assert e.value.field == "pruning.at_init.methods[1]"
    with pytest.raises(SpecError) as e:  # digits: 1437 training examples
        make(**{"pruning.at_init": {"methods": ["snip"], "scoring": {"examples_per_class": 150}}})
    assert e.value.field == "pruning.at_init.scoring.examples_per_class"


def test_magnitude_increase_and_reinit_signs_read_w_k():
    spec = make(**{"pruning.criterion": "magnitude_increase", "pruning.controls": ["random_reinit", "random_reinit_signs"]})
    p = plan(spec)
    pruning = [j for j in p.jobs.values() if j.kind == "train" and j.spec.prune is not None]
    assert pruning and all(j.spec.prune.criterion == "magnitude_increase" for j in pruning)
    assert all("rewind_weights" in j.inputs for j in pruning if j.spec.prune.strategy != "random")
    signs = [j for j in p.jobs.values() if j.meta.retrain == "reinit_signs"]
    reinit = {(j.meta.replicate, j.meta.rewind_iter, j.meta.level): j for j in p.jobs.values() if j.meta.retrain == "reinit"}
    assert len(signs) == len(reinit)
    for j in signs:  # the same fresh draw as random_reinit: only the signs differ
        twin = reinit[(j.meta.replicate, j.meta.rewind_iter, j.meta.level)]
        assert j.spec.reinit_seed == twin.spec.reinit_seed and j.spec.reinit_keep_signs and j.id != twin.id
    assert summarize(p)["level_jobs_by_family"]["random_reinit_signs"] == len(signs)
    assert PruneConfig().criterion == "magnitude"


# ---- analysis -----------------------------------------------------------------------------------


def _runs(rows):
    from orchestrator.analysis.read import RUNS_COLUMNS
    from orchestrator.schemas import file_schema

    schema = pa.schema([file_schema("runs").field(c) for c in RUNS_COLUMNS])
    full = []
    for i, r in enumerate(rows):
        base = {c: None for c in RUNS_COLUMNS}
        base.update(job_id=f"j{i}", role="level", replicate=0, rewind_iter=0, data_seed=0, retrain="rewind",
                    prune_strategy="magnitude_global", start_iter=0, end_iter=10, parent_job_id=None)
        base.update(r)
        full.append(base)
    return pa.Table.from_pylist(full, schema=schema)


def test_method_comparison_and_ablations_against_hand_computations():
    from orchestrator.analysis import compute
    from orchestrator.analysis.read import INSTABILITY_COLUMNS, INTERPOLATION_COLUMNS
    from orchestrator.schemas import file_schema

    # jobs j0, j1: dense; per replicate r: j(2+3r) IMP, j(3+3r) snip, j(4+3r) snip+shuffle
    rows = [dict(level=0, density=1.0, test_accuracy=0.9, weight_correlation=0.95, replicate=r) for r in (0, 1)]
    for r, (a, b, c) in enumerate([(0.80, 0.70, 0.75), (0.84, 0.66, 0.73)]):
        rows += [dict(level=1, density=0.5, test_accuracy=a, weight_correlation=0.9, replicate=r),
                 dict(role="pai", level=1, density=0.5, prune_strategy="snip", test_accuracy=b, replicate=r,
                      weight_correlation=0.5 + r / 10),
                 dict(role="pai", level=1, density=0.5, prune_strategy="snip", retrain="pai_shuffle",
                      test_accuracy=c, replicate=r)]
    runs = _runs(rows)
    empty = lambda t, cols: pa.schema([file_schema(t).field(c) if c in file_schema(t).names else pa.field(c, pa.string())  # noqa: E731
                                       for c in cols]).empty_table()
    inst = empty("instability", INSTABILITY_COLUMNS)
    interp = pa.schema([(c, pa.float64() if c in ("alpha", "error", "density") else pa.int64()
                         if c in ("replicate", "rewind_iter", "level") else pa.string())
                        for c in INTERPOLATION_COLUMNS]).empty_table()
    layers = pa.table({"job_id": ["j3", "j3", "j6", "j6", "j4", "j4"], "layer": ["a", "b"] * 3,
                       "kept": [10, 40, 30, 20, 20, 30], "total": [100, 100] * 3,
                       "weight_correlation": [0.1, 0.2, 0.3, None, 0.5, 0.6]})
    res = compute(runs, inst, interp, 0.02, num_classes=10, path=False, layers=layers)
    m = {(r["family"], r["level"]): r for r in res.methods.to_pylist()}
    assert set(m) == {("dense", 0), ("imp_rewind", 1), ("snip", 1), ("snip+shuffle", 1)}
    assert m[("snip", 1)]["acc_mean"] == pytest.approx(0.68)
    assert m[("snip", 1)]["acc_std"] == pytest.approx(0.02 * 2 ** 0.5)  # sample std of 0.70, 0.66
    assert m[("snip", 1)]["weight_correlation_mean"] == pytest.approx(0.55)
    assert m[("snip+shuffle", 1)]["weight_correlation_mean"] is None  # none recorded
    abl = res.ablations.to_pylist()
    assert len(abl) == 1 and abl[0]["method"] == "snip" and abl[0]["ablation"] == "shuffle"
    assert abl[0]["delta_acc"] == pytest.approx(0.74 - 0.68)
    prof = {(r["family"], r["layer"]): r for r in res.layer_profiles.to_pylist()}
    assert prof[("snip", "a")]["density"] == pytest.approx((0.10 + 0.30) / 2)
    assert prof[("snip", "b")]["weight_correlation_mean"] == pytest.approx(0.2)  # the null is left out
    assert prof[("snip+shuffle", "b")]["density"] == pytest.approx(0.3)
    assert [r["layer_index"] for r in res.layer_profiles.to_pylist() if r["family"] == "snip"] == [0, 1]
    from orchestrator.analysis.present import key_tables, present

    keys, _ = key_tables(res, 0.02, 1)
    assert keys[-1].title.startswith("Test accuracy (%) of every family") and keys[-1].rows[1][0] == "snip"
    assert "delta_acc_pp" in present(res.ablations).column_names
