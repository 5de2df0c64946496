"""Grids (issue 29): a `grid:` block expands to one ordinary experiment per point, with stable
names, and `lth analyze GRID` compares them. Stores are built from constructed rows."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq
import yaml
import pytest

from orchestrator.cli import _write_grid, main
from orchestrator.experiment import config_hash
from orchestrator.spec import SpecError, load_spec, load_specs, validate_spec
from orchestrator.store import Store
from test_analysis import build_sweep, write_store

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_grid_config_plans_one_experiment_per_point_with_stable_names():
    specs = load_specs(str(CONFIGS / "demo_lr.yaml"))
    assert [s.name for s in specs] == ["demo_lr-lr0.1", "demo_lr-lr0.05", "demo_lr-lr0.01"]
    assert [s.train.optimizer.lr for s in specs] == [0.1, 0.05, 0.01]
    # each point is an ordinary experiment: the same config written out by hand has its hash
    by_hand = specs[1].model_dump(mode="json")
    assert config_hash(validate_spec(by_hand)) == config_hash(specs[1])
    assert len({config_hash(s) for s in specs}) == 3
    paper = load_specs(str(CONFIGS / "cifar10_resnet20_lr.yaml"))
    assert [s.name for s in paper] == ["cifar10_resnet20_lr-lr0.1", "cifar10_resnet20_lr-lr0.01"]
    assert all(Path(r).name == "weight_correlation_2021.yaml" for s in paper for r in s.references)
    with pytest.raises(SpecError) as e:  # one experiment is asked for, a grid is given
        load_spec(str(CONFIGS / "demo_lr.yaml"))
    assert e.value.field == "grid"


@pytest.mark.parametrize("grid, field", [
    ({"sweep.replicates": [1, 2]}, "grid.sweep.replicates"),  # a lottery-ticket axis
    ({"pruning.retrain": [["rewind"]]}, "grid.pruning.retrain"),
    ({"resources.cpus": [1, 2]}, "grid.resources.cpus"),  # runtime only
    ({"train.optimizer.lrr": [0.1]}, "grid.train.optimizer.lrr"),  # a misspelt field
    ({"train.optimizer.lr": []}, "grid.train.optimizer.lr"),
    ({"train.optimizer.lr": [0.1, 0.1]}, "grid.train.optimizer.lr"),
    ({"data.name": ["a b"]}, "grid.data.name"),  # not part of a name
    ({"train.optimizer.lr": [-0.1]}, "train.optimizer.lr"),  # a bad point: the spec's own check
])
def test_bad_grid_is_refused_naming_the_field(tmp_path, grid, field):
    cfg = tmp_path / "g.yaml"
    cfg.write_text(f"base: {CONFIGS / 'demo.yaml'}\ngrid: {json.dumps(grid)}\n")
    with pytest.raises(SpecError) as e:
        load_specs(str(cfg))
    assert e.value.field == field, str(e.value)


def test_plan_json_lists_every_point(capsys):
    assert main(["plan", str(CONFIGS / "demo_lr.yaml"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [p["experiment"] for p in got] == ["demo_lr-lr0.1", "demo_lr-lr0.05", "demo_lr-lr0.01"]
    assert all(p["by_kind"] == {"train": 14} for p in got)


def test_analyze_grid_name_compares_its_experiments(tmp_path):
    names = ["demo_lr-lr0.1", "demo_lr-lr0.05", "demo_lr-lr0.01"]
    for seed, (name, lr) in enumerate(zip(names, (0.1, 0.05, 0.01))):
        rows, _ = build_sweep(seed=seed, experiment=name)
        write_store(tmp_path, rows, experiment=name)
        d = tmp_path / "experiments" / name
        d.mkdir(parents=True)
        (d / "spec.yaml").write_text(f"name: {name}\nmodel: mlp_300_100\ntrain: {{optimizer: {{lr: {lr}}}}}\n")
    args = argparse.Namespace(config=str(CONFIGS / "demo_lr.yaml"), overrides=[])
    _write_grid(Store(str(tmp_path)), args, names)
    assert main(["analyze", "demo_lr", "--store", str(tmp_path)]) == 0
    out = tmp_path / "reports" / "demo_lr"
    html = (out / "report.html").read_text()
    assert all(n in html for n in names) and "train.optimizer.lr" in html  # the differing field, named
    diffs = pq.read_table(out / "differences.parquet").to_pylist()
    assert {r["experiment"] for r in diffs} == set(names[1:]) and {r["minus"] for r in diffs} == {names[0]}
    # a name that is neither an experiment nor a grid is still refused
    assert main(["analyze", "demo_l", "--store", str(tmp_path)]) == 2


def test_derived_finetune_lr_is_not_listed_as_a_difference(tmp_path):
    from orchestrator.analysis.compare import config_differences
    from orchestrator.analysis.read import Store as ReadStore

    specs = load_specs(str(CONFIGS / "demo_lr.yaml"))
    for s in specs:
        d = tmp_path / "experiments" / s.name
        d.mkdir(parents=True)
        (d / "spec.yaml").write_text(yaml.safe_dump(s.model_dump(mode="json")))
    names = [s.name for s in specs]
    assert [f for f, _ in config_differences(ReadStore.open(str(tmp_path)), names)] == ["train.optimizer.lr"]
    # set by hand to a rate of its own, it is a difference again
    d = tmp_path / "experiments" / names[0] / "spec.yaml"
    d.write_text(d.read_text().replace("finetune_lr: 0.001", "finetune_lr: 0.003"))
    assert "pruning.finetune_lr" in [f for f, _ in config_differences(ReadStore.open(str(tmp_path)), names)]
