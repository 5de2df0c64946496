"""Planning without torch: the model catalog (trainers/model_catalog.py) and the data catalog
(trainers/data/catalog.py) against the real models and loaders they stand for."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainers import model_catalog as mc
from trainers.data import catalog, ondisk, sources
from trainers.jobs import DataConfig
from trainers.models import MODELS, meta_model
from trainers.pruning import prunable_sizes

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_catalog_is_what_the_models_generate():
    assert mc.CATALOG_FILE.read_text() == mc.render(mc.generate()), (
        "trainers/model_catalog.json is stale: run `make docs` and commit it"
    )


def test_the_registries_agree():
    assert mc.model_names() == sorted(MODELS)
    assert set(catalog.DESCRIPTIONS) == set(sources.DATASETS)


@pytest.mark.parametrize(
    ("model", "shape", "classes", "weights"),
    [
        # Oracles from the literature, not from this code: torchvision documents 25,557,032
        # parameters for ResNet-50 and 11,689,512 for ResNet-18; less their BatchNorm scales and
        # shifts (2 x 26,560 and 2 x 4,800 channels) and the fc bias (1,000).
        ("resnet50", (3, 224, 224), 1000, 25_557_032 - 2 * 26_560 - 1000),
        ("resnet18", (3, 224, 224), 1000, 11_689_512 - 2 * 4_800 - 1000),
        # LeNet-300-100 on 64 features: 64*300 + 300*100 + 100*10.
        ("mlp_300_100", (64,), 10, 64 * 300 + 300 * 100 + 100 * 10),
        # CIFAR ResNet-20: 272,474 parameters (He et al. 2016's "0.27M"; open_lth's count), less
        # 2 x 784 BatchNorm channels and the fc bias (10).
        ("cifar_resnet_20", (3, 32, 32), 10, 272_474 - 2 * 784 - 10),
    ],
)
def test_catalogued_sizes_match_independent_counts(model, shape, classes, weights):
    assert sum(mc.conv_linear_weights(model, shape, classes).values()) == weights


def test_every_entry_is_the_real_models_count():
    data = json.loads(mc.CATALOG_FILE.read_text())
    assert data["fingerprint"] == mc.fingerprint()
    for key, entry in data["entries"].items():
        model, shape, classes = key.split("|")
        shape = tuple(int(d) for d in shape.split("x"))
        if "error" in entry:
            with pytest.raises(ValueError):
                meta_model(model, shape, int(classes))
            continue
        real = prunable_sizes(meta_model(model, shape, int(classes)))
        assert [[n, s] for n, s in real.items()] == entry["weights"], key


def test_a_stale_catalog_is_not_used(tmp_path, monkeypatch):
    data = json.loads(mc.CATALOG_FILE.read_text())
    key = "mlp_300_100|64|10"
    data["entries"][key]["weights"][0][1] += 1  # a tampered count, to see which answer comes back
    path = tmp_path / "catalog.json"
    monkeypatch.setattr(mc, "CATALOG_FILE", path)
    try:
        path.write_text(json.dumps(data))
        mc._load.cache_clear()
        assert mc.conv_linear_weights("mlp_300_100", (64,), 10)["hidden.0.weight"] == 64 * 300 + 1  # current: used
        data["fingerprint"]["models.py"] = "0" * 64  # as if models.py had changed since
        path.write_text(json.dumps(data))
        mc._load.cache_clear()
        assert mc.conv_linear_weights("mlp_300_100", (64,), 10)["hidden.0.weight"] == 64 * 300  # stale: measured
        path.write_text("{not json")
        mc._load.cache_clear()
        assert mc.model_names() == sorted(MODELS)
    finally:
        mc._load.cache_clear()


def test_shapes_outside_the_catalog_are_measured():
    sizes = mc.conv_linear_weights("cifar_vgg_11", (3, 48, 48), 7)
    assert sizes == prunable_sizes(meta_model("cifar_vgg_11", (3, 48, 48), 7))
    with pytest.raises(ValueError, match="image input shape"):
        mc.conv_linear_weights("resnet18", (64,), 10)  # catalogued as an error


def test_data_catalog_describes_without_loading_as_the_loaders_count(tmp_path):
    """describe() (no torch) against the loaded bundle's own counts."""
    import torch

    for cfg in (DataConfig(name="digits"), DataConfig(name="synthetic", image_size=16, num_classes=3, num_train=40, num_test=8)):
        assert ondisk.describe(cfg) == sources.open_data(cfg, torch.device("cpu")).info


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_planning_a_shipped_config_never_imports_torch(config):
    """What `lth plan` (and a no-op `lth run`) does, in a fresh interpreter: no torch, Ray or W&B."""
    code = (
        "import sys\n"
        "from orchestrator.spec import load_specs\n"
        "from orchestrator.planner import plan\n"
        f"for spec in load_specs({str(ROOT / 'configs' / config)!r}):  # a grid: every point\n"
        "    p = plan(spec)\n"
        "    if spec.data.name == 'digits':\n"
        "        spec.check_data()  # lth run's pre-flight, where the data is there (the others lack data.root)\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'ray', 'wandb') if m in sys.modules)\n"
        "print(len(p.jobs), heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_describing_a_cifar_folder_counts_it_without_torch(tmp_path):
    """A data.root with real batch files: the planner counts them (numpy and pickle only) and
    the count is what the loader loads."""
    from trainers.data.export import write_cifar_dir

    folder = write_cifar_dir(tmp_path, num_classes=10, num_train=30, num_test=12, seed=1)
    code = (
        "import sys\n"
        "from trainers.data.ondisk import describe\n"
        "from trainers.jobs import DataConfig\n"
        f"info = describe(DataConfig(name='cifar10', root={str(folder)!r}, num_train=20))\n"
        "print(info.num_train, info.num_test, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["20", "12", "False"]
    import torch

    loaded = sources.open_data(DataConfig(name="cifar10", root=str(folder), num_train=20), torch.device("cpu")).info
    assert (loaded.num_train, loaded.num_test) == (20, 12)
