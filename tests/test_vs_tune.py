"""benchmarks/vs_tune.py: both sides do the same work. Its lth side is a config, its Tune side a
function with the same numbers written out; a change to one that the other misses would compare
different work. (The benchmark itself needs Ray Tune, the `bench` extra, which `make test` does
not install.)"""
from __future__ import annotations

import inspect

from benchmarks import vs_tune
from orchestrator.planner import plan
from orchestrator.spec import load_spec


def test_the_lth_side_plans_exactly_the_work_the_tune_trial_does(tmp_path):
    config = tmp_path / "vs-tune.yaml"
    config.write_text(vs_tune.CONFIG.replace("{n}", "5"))
    jobs = list(plan(load_spec(str(config), [])).jobs.values())
    assert len(jobs) == 5 and {j.kind for j in jobs} == {"train"}
    assert sorted(j.spec.init_seed for j in jobs) == list(range(5))  # the trials' seeds 0..N-1
    for job in jobs:
        t = job.spec.train
        assert (job.spec.data_seed, job.spec.start_iter, job.spec.stop_iter) == (0, 0, vs_tune.ITERATIONS)
        assert (t.model, t.data.name, t.batch_size, t.eval_every, t.eval_train_examples) == (
            "mlp_300_100", "digits", vs_tune.BATCH, 0, vs_tune.EVAL_TRAIN)
        o = t.optimizer
        assert (o.name, o.lr, o.momentum, o.weight_decay, o.nesterov) == ("sgd", 0.05, 0.9, 1e-4, False)
        assert t.schedule.milestones == () and t.label_smoothing == 0.0
    trial = inspect.getsource(vs_tune.tune_trial)
    assert "lr=0.05, momentum=0.9, weight_decay=1e-4" in trial  # the same optimizer, written out there
    assert "train_stream(0, BATCH, 0," in trial  # data seed 0, from iteration 0
