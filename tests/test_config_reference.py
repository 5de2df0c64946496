"""Configs a researcher can write without reading the source: the generated field reference,
the JSON schema, `base:` inheritance and `lth plan --show-config`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from orchestrator import cli
from orchestrator.config_reference import fields, markdown
from orchestrator.spec import ExperimentSpec, SpecError, load_spec, validate_spec

ROOT = Path(__file__).resolve().parents[1]


def test_committed_reference_is_current():
    committed = (ROOT / "docs" / "config-reference.md").read_text()
    assert committed == markdown(), "docs/config-reference.md is stale: run `make docs`"


def test_every_field_has_a_description_and_is_in_the_reference():
    text = markdown()
    names = []
    for dotted, f, _sub in fields():
        assert f.description and len(f.description) > 5, f"{dotted} has no description"
        assert f"| `{dotted}` |" in text
        names.append(dotted)
    # Nested sections are walked: a field three levels down is listed.
    assert "sweep.branch.num_alphas" in names and "train.optimizer.lr" in names


def test_schema_command_prints_the_json_schema(capsys):
    assert cli.main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == ExperimentSpec.model_json_schema()
    assert set(schema["required"]) == {"name", "model", "train", "sweep"}


def test_show_config_prints_the_resolved_config(capsys):
    cfg = str(ROOT / "configs" / "cifar10_resnet20_lmc.yaml")
    assert cli.main(["plan", cfg, "--show-config", "--set", "train.optimizer.lr=0.05"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    # Epochs are resolved into iterations (160 x ceil(50000 / 128) = 160 x 391 = 62,560, as
    # open_lth counts them), defaults filled.
    assert shown["train"]["iterations"] == 62560 and shown["train"]["epochs"] is None
    assert shown["train"]["schedule"]["milestones"] == [31280, 46920]
    assert shown["train"]["optimizer"]["lr"] == 0.05
    assert shown["resources"]["pack_strategy"] == "auto"  # a default the file does not mention
    # What it prints is itself a config that resolves to the same spec.
    assert validate_spec(shown).model_dump() == load_spec(cfg, ["train.optimizer.lr=0.05"]).model_dump()


def test_base_merges_mappings_and_replaces_lists(tmp_path):
    (tmp_path / "parent.yaml").write_text((ROOT / "configs" / "demo.yaml").read_text())
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("base: ../parent.yaml\nname: child\ntrain: {optimizer: {lr: 0.02}}\n"
                     "sweep: {rewind_iters: [0]}\n")
    parent = load_spec(str(tmp_path / "parent.yaml"))
    spec = load_spec(str(child))
    assert spec.name == "child"
    assert spec.train.optimizer.lr == 0.02
    assert spec.train.optimizer.momentum == parent.train.optimizer.momentum == 0.9  # merged
    assert spec.rewind_iters == [0]  # a list replaces, never appends
    assert spec.sweep.branch.seeds == parent.sweep.branch.seeds == [1, 2]
    # --set applies on top of the merged config.
    assert load_spec(str(child), ["train.optimizer.lr=0.3"]).train.optimizer.lr == 0.3


def test_vgg_config_inherits_the_resnet_recipe():
    vgg = load_spec(str(ROOT / "configs" / "cifar10_vgg16_imp.yaml"))
    res = load_spec(str(ROOT / "configs" / "cifar10_resnet20_lmc.yaml"))
    assert "base:" in (ROOT / "configs" / "cifar10_vgg16_imp.yaml").read_text()
    assert vgg.model == "cifar_vgg_16" and vgg.pruning.levels == 19
    assert vgg.train.model_dump() == res.train.model_dump()
    assert vgg.data.model_dump() == res.data.model_dump()


@pytest.mark.parametrize("text, words", [
    ("base: nowhere.yaml\n", "no such config file"),
    ("base: 3\n", "path of another config"),
    ("base: a.yaml\n", "cycle"),
])
def test_bad_base_is_named(tmp_path, text, words):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(str(tmp_path / "a.yaml"))
    assert info.value.field == "base" and words in info.value.reason


def test_a_cycle_is_named_file_by_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("base: c.yaml\n")
    (tmp_path / "c.yaml").write_text("base: a.yaml\n")
    with pytest.raises(SpecError) as info:
        load_spec(str(tmp_path / "a.yaml"))
    chain = [str(tmp_path / f) for f in ("a.yaml", "b.yaml", "c.yaml", "a.yaml")]
    assert f"({' -> '.join(chain)})" in info.value.reason


def test_a_list_in_a_single_value_field_points_to_one_experiment_per_value(tmp_path, capsys):
    path = tmp_path / "two_lrs.yaml"
    path.write_text(f"base: {ROOT / 'configs' / 'demo.yaml'}\ntrain: {{optimizer: {{lr: [0.1, 0.05]}}}}\n")
    assert cli.main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train.optimizer.lr" in err and "one experiment per value" in err
