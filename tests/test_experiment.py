"""An experiment is its name plus its resolved config (DESIGN.md "Jobs and the graph")."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from conftest import DEMO, tiny_args
from orchestrator.cli import main
from orchestrator.experiment import check_against_store, config_hash
from orchestrator.planner import plan
from orchestrator.spec import SpecError, load_spec
from orchestrator.store import Store


def _spec(*extra: str):
    return load_spec(DEMO, [a for a in tiny_args(*extra) if a != "--set"])


def _stored(tmp_path: Path, *extra: str) -> Store:
    """A store holding the experiment as `lth run` leaves it (its spec and its plan)."""
    spec = _spec(*extra)
    store = Store(str(tmp_path / "store"))
    jobs = {jid: {"kind": j.kind} for jid, j in plan(spec).jobs.items()}
    store.write_experiment(spec.name, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), jobs)
    return store


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_changed_config_is_refused_naming_old_and_new_values_and_writing_nothing(tmp_path, capsys):
    store = _stored(tmp_path)
    before = _digest(tmp_path / "store")
    rc = main(["run", DEMO, "--store", store.root, *tiny_args("train.optimizer.lr=0.04", "pruning.levels=3")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "train.optimizer.lr: changed from 0.05 to 0.04" in err
    assert "pruning.levels" not in err  # growth is not a change
    assert "name: changed" not in err  # the name is the experiment, not a field of its config
    assert "--set name=" in err and "--store" in err  # how to fork or start over
    assert _digest(tmp_path / "store") == before


@pytest.mark.parametrize(
    "extra, field",
    [
        (("pruning.levels=1", "sweep.branch.levels=[0]"), "pruning.levels: changed from 2 to 1"),  # work taken away
        # (the demo's pruning at init scores W_0: it must move with the rewinding points)
        (("sweep.rewind_iters=[10]", "pruning.at_init.at_iters=[10]"), "sweep.rewind_iters: changed from [0, 10] to [10]"),
        (("sweep.branch.num_alphas=5",), "sweep.branch.num_alphas: changed from 3 to 5"),
        (("train.iterations=50",), "train.iterations: changed from 40 to 50"),
    ],
)
def test_changes_that_remove_or_alter_planned_jobs_are_named(tmp_path, extra, field):
    store = _stored(tmp_path)
    spec = _spec(*extra)
    with pytest.raises(SpecError) as e:
        check_against_store(store, spec, set(plan(spec).jobs))
    assert field in str(e.value)


def test_growth_and_runtime_changes_are_the_same_experiment(tmp_path):
    store = _stored(tmp_path)
    same = _spec("scheduler.max_attempts=5", "resources.cpus=0.5", "tracking.wandb=disabled")
    v = check_against_store(store, same, set(plan(same).jobs))
    assert v.status == "same" and config_hash(same) == config_hash(_spec())
    grown = _spec("pruning.levels=3", "sweep.rewind_iters=[0, 5, 10]", "sweep.branch.seeds=[1, 2, 3]",
                  "sweep.replicates=2", "pruning.controls=[random_prune]")
    new_ids = set(plan(grown).jobs)
    v = check_against_store(store, grown, new_ids)
    assert v.status == "grows" and v.added_jobs == len(new_ids) - len(plan(_spec()).jobs) > 0
    assert "grows by" in v.message("demo")
    assert config_hash(grown) != config_hash(_spec())
    # a fork under a new name is a new experiment
    fork = _spec("name=demo-lr", "train.optimizer.lr=0.04")
    assert check_against_store(store, fork, set(plan(fork).jobs)).status == "new"


def test_analysis_reads_only_the_current_plan(tmp_path):
    """Rows of jobs outside the plan (a store written before configs were checked) are left out."""
    from orchestrator.analysis.read import Store as AStore, only_planned, plan_job_ids
    from orchestrator.schemas import file_schema

    store = _stored(tmp_path)
    ids = plan_job_ids(AStore(store), "demo")
    assert ids == set(plan(_spec()).jobs)
    import pyarrow as pa

    t = pa.table({"job_id": [sorted(ids)[0], "not-planned"]})
    assert only_planned(t, "job_id", ids)["job_id"].to_pylist() == [sorted(ids)[0]]
    assert file_schema("runs").field("config_hash").type == pa.string()


def test_a_changed_config_lists_only_fields_whose_effective_value_differs(tmp_path, capsys):
    """The stored spec holds every field (granularity: weight, ...), the identity config leaves
    fields at their default out: those absences are the default, not a change; finetune_lr
    follows the learning rate and is shown as derived, after the user's own change."""
    store = _stored(tmp_path)
    rc = main(["plan", DEMO, "--store", store.root, *tiny_args("train.optimizer.lr=0.04")])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert lines[0] == "error: train.optimizer.lr: changed from 0.05 to 0.04", err
    assert lines[1].startswith("error: pruning.finetune_lr: follows the final learning rate") and "derived" in lines[1]
    assert lines[2].startswith("error: name: experiment 'demo' already exists") and len(lines) == 3, err
    # a finetune_lr set by hand to another value than the derived one is a change of its own
    with pytest.raises(SpecError) as e:
        spec = _spec("pruning.finetune_lr=0.003")
        check_against_store(store, spec, set())  # (the demo has no finetune jobs: say all are gone)
    assert "pruning.finetune_lr: changed from 0.0005 to 0.003" in str(e.value)


def test_a_config_stored_before_a_field_existed_is_compared_at_that_fields_default(tmp_path):
    store = _stored(tmp_path)
    rel = "experiments/demo/spec.yaml"
    old = yaml.safe_load(store.read_bytes(rel))
    del old["pruning"]["granularity"], old["train"]["l1_gamma"]
    store.write_bytes(rel, yaml.safe_dump(old).encode())
    spec = _spec("train.optimizer.lr=0.04", "pruning.granularity=weight")
    with pytest.raises(SpecError) as e:
        check_against_store(store, spec, set(plan(spec).jobs))
    assert "granularity" not in str(e.value) and "l1_gamma" not in str(e.value)
