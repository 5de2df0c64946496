"""The experiment spec: loading, overrides, resolution, and a named error for each bad input."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from orchestrator.spec import AUTO_PACK, SMALL_MODELS, ExperimentSpec, SpecError, load_spec, load_specs, validate_spec

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))

BASE = {
    "name": "tiny",
    "model": "mlp_300_100",
    "data": {"name": "digits"},
    "train": {
        "iterations": 400,
        "batch_size": 64,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "schedule": {"name": "step", "milestones": [200, 300]},
    },
    "pruning": {"fraction": 0.5, "levels": 3},
    "sweep": {"replicates": 2, "rewind_iters": [0, 50], "branch": {"seeds": [1, 2], "levels": [0, 2]}},
}


def write(tmp_path: Path, data, name: str = "spec.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


def with_(path: str, value):
    """BASE with `value` set at dotted `path` (a missing leaf is created)."""
    d = copy.deepcopy(BASE)
    node = d
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return d


def spec_error(tmp_path, data, overrides=()) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, data), overrides)
    return info.value


def test_shipped_configs_load_and_round_trip():
    assert len(CONFIGS) >= 5
    for path, spec in ((p, s) for p in CONFIGS for s in load_specs(str(p))):  # a grid: every point
        dumped = spec.model_dump()
        # The resolved dump is itself a valid spec, and the same one.
        assert validate_spec(copy.deepcopy(dumped)).model_dump() == dumped, path
        assert dumped["train"]["epochs"] is None and dumped["train"]["iterations"] == spec.iterations


def test_epochs_resolve_to_iterations():
    cifar = load_spec(str(Path(CONFIGS[0]).parent / "cifar10_resnet20_lmc.yaml"))
    per_epoch = 391  # ceil(50,000 / 128), as open_lth counts an epoch
    assert cifar.iterations == 160 * per_epoch == 62_560
    assert cifar.train.schedule.milestones == [80 * per_epoch, 120 * per_epoch] == [31_280, 46_920]
    assert cifar.train.eval_every == 10 * per_epoch
    imnet = load_spec(str(Path(CONFIGS[0]).parent / "imagenet_resnet50_rewind.yaml"))
    per_epoch = 1252  # ceil(1,281,167 / 1024)
    assert imnet.iterations == 90 * per_epoch
    assert imnet.rewind_iters == [0, per_epoch, 2 * per_epoch, 5 * per_epoch]
    assert imnet.train.schedule.warmup_iters == 5 * per_epoch
    tc = imnet.train_config()
    assert tc.schedule.milestones == (30 * per_epoch, 60 * per_epoch, 80 * per_epoch)
    assert tc.optimizer.lr == 0.4 and tc.batch_size == 1024 and tc.data.name == "imagenet"


def test_conversion_to_trainers_configs(tmp_path):
    spec = load_spec(write(tmp_path, BASE))
    tc = spec.train_config()
    assert tc.iterations == 400 and tc.batch_size == 64 and tc.model == "mlp_300_100"
    assert tc.schedule.milestones == (200, 300) and isinstance(tc.optimizer.betas, tuple)
    assert spec.prune_config().fraction == 0.5 and spec.prune_config("random").strategy == "random"
    assert spec.init_seeds == [0, 1] and spec.rewind_iters == [0, 50] and spec.branch_levels == [0, 2]
    hash(tc)  # frozen all the way down: usable as a job description


def test_overrides(tmp_path):
    path = write(tmp_path, BASE)
    spec = load_spec(
        path,
        [
            "train.optimizer.lr=0.01",
            "sweep.rewind_iters=[0, 100, 200]",
            "sweep.rewind_iters[2]=150",
            "sweep.branch.levels=all",
            "tracking.wandb=disabled",  # the file has no tracking section: the default is set
            "pruning.finetune_lr=1e-3",  # YAML 1.1 would read 1e-3 as a string
            "store=/tmp/somewhere",
        ],
    )
    assert spec.train.optimizer.lr == 0.01
    assert spec.rewind_iters == [0, 100, 150]
    assert spec.branch_levels == [0, 1, 2, 3]
    assert spec.tracking.wandb == "disabled"
    assert spec.pruning.finetune_lr == 0.001
    assert spec.store == "/tmp/somewhere"


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.optimizer.lrr=0.1", "train.optimizer.lrr"),
        ("nosuch=1", "nosuch"),
        ("sweep.rewind_iters[5]=3", "sweep.rewind_iters[5]"),
        ("train.iterations.x=3", "train.iterations.x"),
        ("train.batch_size", "train.batch_size"),
    ],
)
def test_bad_override_path(tmp_path, override, field):
    err = spec_error(tmp_path, BASE, [override])
    assert err.field == field and "--set" in err.reason


def test_missing_file_and_invalid_yaml(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(SpecError) as info:
        load_spec(missing)
    assert info.value.field == missing and "no such" in info.value.reason
    bad = write(tmp_path, "name: x\ntrain: {iterations: [1, 2\n", "bad.yaml")
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    assert info.value.field == bad and "invalid YAML" in info.value.reason
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, "- just\n- a list\n", "list.yaml"))
    assert "mapping" in info.value.reason


BAD = [
    # (what, data, field, words in the reason)
    ("unknown top-level key", {**BASE, "epochz": 3}, "epochz", "unknown key"),
    ("unknown nested key", with_("train.optimizer.lrr", 0.1), "train.optimizer.lrr", "unknown key"),
    ("unknown key lists valid ones", with_("sweep.branch.seed", [1]), "sweep.branch.seed", "seeds"),
    ("wrong type", with_("train.batch_size", "many"), "train.batch_size", "integer"),
    ("float for an int", with_("pruning.levels", 2.5), "pruning.levels", "integer"),
    ("wrong type in list", with_("sweep.rewind_iters", [0, "x"]), "sweep.rewind_iters[1]", "integer"),
    ("rewind beyond training", with_("sweep.rewind_iters", [0, 400]), "sweep.rewind_iters[1]", "outside training"),
    ("negative rewind point", with_("sweep.rewind_iters", [-1]), "sweep.rewind_iters[0]", "outside training"),
    ("duplicate rewind point", with_("sweep.rewind_iters", [0, 50, 0]), "sweep.rewind_iters[2]", "twice"),
    ("no replicates", with_("sweep.replicates", 0), "sweep.replicates", "greater than"),
    ("no init seeds", {**BASE, "sweep": {"init_seeds": [], "rewind_iters": [0]}}, "sweep.init_seeds", "at least 1"),
    ("no rewind points", with_("sweep.rewind_iters", []), "sweep.rewind_iters", "at least 1"),
    ("negative levels", with_("pruning.levels", -1), "pruning.levels", "greater than"),
    ("fraction 0", with_("pruning.fraction", 0), "pruning.fraction", "greater than 0"),
    ("fraction 1.5", with_("pruning.fraction", 1.5), "pruning.fraction", "less than 1"),
    ("unknown model", with_("model", "resnet9000"), "model", "mlp_300_100"),
    ("unknown data set", with_("data", {"name": "mnist9"}), "data.name", "digits"),
    ("branch level beyond levels", with_("sweep.branch", {"seeds": [1, 2], "levels": [0, 4]}), "sweep.branch.levels[1]", "beyond"),
    ("num_alphas 1", with_("sweep.branch", {"seeds": [1, 2], "num_alphas": 1}), "sweep.branch.num_alphas", "greater than"),
    ("negative gpus", with_("resources", {"gpus": -1}), "resources.gpus", "greater than"),
    ("fractional gpus above one", with_("resources", {"gpus": 1.5}), "resources.gpus", "whole number"),
    ("negative cpus", with_("resources", {"cpus": -2}), "resources.cpus", "greater than"),
    ("both iterations and epochs", with_("train.epochs", 10), "train.iterations", "exactly one"),
    ("neither iterations nor epochs", {**BASE, "train": {"batch_size": 64}}, "train.iterations", "exactly one"),
    ("bad name", with_("name", "my exp!"), "name", "pattern"),
    ("milestone beyond training", with_("train.schedule", {"name": "step", "milestones": [500]}), "train.schedule.milestones[0]", "outside"),
    ("unknown retrain mode", with_("pruning.retrain", ["rewind", "rewnd"]), "pruning.retrain[1]", "rewind"),
    ("missing required", {k: v for k, v in BASE.items() if k != "model"}, "model", "missing"),
    ("batch larger than data", with_("train.batch_size", 5000), "train.batch_size", "larger than the training set"),
    ("controls without rewind", with_("pruning", {"retrain": ["finetune"], "controls": ["random_reinit"]}), "pruning.controls", "rewind"),
    ("wandb mode", with_("tracking", {"wandb": "sometimes"}), "tracking.wandb", "offline"),
    ("pack 0", with_("resources", {"pack": 0}), "resources.pack", "at least 1 or auto"),
    ("pack word", with_("resources", {"pack": "many"}), "resources.pack", "auto"),
    ("pack strategy vmap (gone)", with_("resources", {"pack_strategy": "vmap"}), "resources.pack_strategy", "stacked"),
    ("deterministic word", with_("train.deterministic", "sometimes"), "train.deterministic", "bool"),
    ("one branch seed", with_("sweep.branch", {"seeds": [1], "levels": [0]}), "sweep.branch.seeds", "at least two seeds"),
    ("CUDA graphs without a GPU", with_("train.cuda_graphs", True), "train.cuda_graphs", "need a GPU"),
]


def test_pack_auto_packs_small_models_on_a_gpu_only():
    spec = validate_spec(copy.deepcopy(BASE))
    assert spec.resources.pack == "auto" and spec.pack_size() == 1  # mlp on CPU: nothing to fill
    assert validate_spec(with_("resources", {"gpus": 0.25})).pack_size() == AUTO_PACK == 32
    big = with_("resources", {"gpus": 1})
    big["model"], big["data"] = "resnet50", {"name": "synthetic", "image_size": 32, "num_classes": 10, "num_train": 256, "num_test": 64}
    assert validate_spec(big).pack_size() == 1
    assert validate_spec(with_("resources", {"gpus": 1, "pack": 3})).pack_size() == 3
    cifar = load_spec(str(Path(CONFIGS[0]).parent / "cifar10_resnet20_lmc.yaml"))
    assert cifar.resources.pack == "auto" and cifar.pack_size() == AUTO_PACK


def test_shipped_configs_give_small_models_whole_gpus():
    """Issue 22: no shipped config time-shares a GPU between worker processes (each its own CUDA
    context); a small model gets a whole GPU and packs (benchmarks/training.py SHIPPED_PACKING
    is the benchmark row of this configuration)."""
    from benchmarks.training import SHIPPED_PACKING

    small = [s for p in CONFIGS for s in load_specs(str(p)) if s.model.startswith(SMALL_MODELS)]
    assert small
    for spec in small:
        assert spec.resources.gpus in (0, 1) or spec.resources.gpus == int(spec.resources.gpus), spec.name
        if spec.resources.gpus:
            assert spec.pack_size() == AUTO_PACK, spec.name
    lmc = load_spec(str(Path(CONFIGS[0]).parent / "cifar10_resnet20_lmc.yaml"))
    assert SHIPPED_PACKING == {"model": lmc.model, "gpus": lmc.resources.gpus, "k": lmc.pack_size()}


@pytest.mark.parametrize("what, data, field, words", BAD, ids=[b[0] for b in BAD])
def test_bad_config_names_the_field(tmp_path, what, data, field, words):
    err = spec_error(tmp_path, data)
    assert err.field == field, str(err)
    assert words in err.reason, str(err)
    assert str(err).splitlines()[0] == f"{err.field}: {err.reason}"


def test_one_branch_seed_is_fine_with_the_noise_floor_pair():
    spec = validate_spec(with_("sweep.branch", {"seeds": [1], "levels": [0], "noise_floor": True}))
    assert spec.sweep.branch.seeds == [1]


def test_a_key_given_twice_is_refused_with_its_lines(tmp_path):
    text = "name: dup\ntrain:\n  batch_size: 64\n  iterations: 10\n  batch_size: 32\n"
    err = spec_error(tmp_path, text)
    assert "duplicate key 'batch_size' (first given on line 3)" in err.reason
    # YAML's merge key is not a duplicate: overriding a merged key is what anchors are for.
    d = copy.deepcopy(BASE)
    d["train"]["optimizer"] = "__OPT__"
    text = yaml.safe_dump(d).replace("__OPT__", "{<<: {name: sgd, lr: 0.05, momentum: 0.9}, lr: 0.02}")
    assert load_spec(write(tmp_path, text, "anchors.yaml")).train.optimizer.lr == 0.02


def test_a_root_that_holds_no_data_set_is_bad_input(tmp_path):
    """An existing data.root without the data set's files: a SpecError naming data.root when
    planning (no traceback), for the CIFAR and the image-folder layouts."""
    for name, batch, words in (("cifar10", 128, "no CIFAR-10 batch files"), ("imagenet", 64, "train does not exist")):
        d = with_("data", {"name": name, "root": str(tmp_path)})
        d["model"] = "resnet18" if name == "imagenet" else "mlp_300_100"
        d["train"]["batch_size"] = batch
        err = spec_error(tmp_path, d)
        assert err.field == "data.root" and words in err.reason, str(err)


def test_check_data_names_the_root(tmp_path):
    d = with_("data", {"name": "cifar10", "root": str(tmp_path / "no_cifar_here")})
    d["train"]["batch_size"] = 128
    spec = load_spec(write(tmp_path, d))  # planning needs no data...
    with pytest.raises(SpecError) as info:  # ...running does
        spec.check_data()
    assert info.value.field == "data.root" and "no_cifar_here" in info.value.reason
    load_spec(write(tmp_path, BASE)).check_data()  # digits ships with scikit-learn


def test_model_validate_directly_gives_spec_errors_too():
    bad = with_("sweep.rewind_iters", [0, 1000])
    with pytest.raises(SpecError) as info:
        validate_spec(bad)
    assert info.value.field == "sweep.rewind_iters[1]"
    assert isinstance(validate_spec(copy.deepcopy(BASE)), ExperimentSpec)


PAPER_CONFIGS = ["cifar10_resnet20_lmc.yaml", "cifar10_vgg16_imp.yaml", "imagenet_resnet50_rewind.yaml",
                 "imagenet_resnet18_ffcv.yaml", "cifar10_vgg19_slimming.yaml", "cifar10_vgg16_hrank.yaml"]


@pytest.mark.parametrize("name", PAPER_CONFIGS + ["cifar10_resnet20_lr.yaml"])
def test_every_hyperparameter_of_a_paper_config_states_its_source(name):
    """Each key line carries a comment, or sits right under a comment line (a block's source)."""
    lines = (Path(CONFIGS[0]).parent / name).read_text().splitlines()
    for i, line in enumerate(lines):
        text = line.strip()
        if not text or text.startswith("#") or text.endswith(":"):
            continue  # comments, and section headers (data:, train:, ...)
        commented = "#" in line or (i > 0 and lines[i - 1].strip().startswith("#"))
        assert commented, f"{name}:{i + 1}: {text!r} states no source"


def test_paper_configs_match_the_papers():
    cfg = {n: load_spec(str(Path(CONFIGS[0]).parent / n)) for n in PAPER_CONFIGS}
    resnet20 = cfg["cifar10_resnet20_lmc.yaml"]
    assert resnet20.pruning.ignore == []  # open_lth's cifar_resnet_20 prunes fc
    assert cfg["cifar10_vgg16_imp.yaml"].pruning.ignore == ["fc.weight"]  # its VGG does not
    for n in ("cifar10_resnet20_lmc.yaml", "cifar10_vgg16_imp.yaml", "imagenet_resnet50_rewind.yaml"):
        assert cfg[n].train.precision == "fp32", n  # the papers trained in fp32
    ffcv = cfg["imagenet_resnet18_ffcv.yaml"]
    assert ffcv.train.optimizer.decay_norm_and_bias is False  # ffcv's bn_wd 0


def test_cuda_graphs_refuse_streamed_data_and_compile_and_take_progressive_resizing(tmp_path):
    """trainers/graph_rules.py: a hand-captured graph refuses a streamed loader (its producer
    thread works on the GPU during capture) and an explicit torch.compile; compile: auto resolves
    to eager under cuda_graphs; progressive resizing is accepted (one graph per side)."""
    graphed = with_("resources", {"gpus": 1})
    graphed["train"]["cuda_graphs"] = True
    streamed = copy.deepcopy(graphed)
    from trainers.data.export import write_image_folder

    write_image_folder(tmp_path / "jpegs", num_classes=2, per_class_train=40, per_class_val=1, image_size=36, image_format="jpeg")
    streamed["data"] = {"name": "imagenet", "root": str(tmp_path / "jpegs"), "image_size": 32}
    err = spec_error(tmp_path, streamed)
    assert err.field == "train.cuda_graphs" and "streamed data" in err.reason and "'imagenet'" in err.reason
    compiled = copy.deepcopy(graphed)
    compiled["train"]["compile"] = True
    err = spec_error(tmp_path, compiled)
    assert err.field == "train.compile" and "hand-captured CUDA graph" in err.reason
    assert validate_spec(graphed).train_config().compile is False  # auto
    ramp = copy.deepcopy(graphed)
    ramp["data"] = {"name": "synthetic", "image_size": 64, "num_classes": 4, "num_train": 256, "num_test": 64,
                    "min_res": 32, "max_res": 64, "end_ramp_epoch": 2}
    cfg = validate_spec(ramp).train_config()
    assert cfg.cuda_graphs and cfg.data.min_res == 32
