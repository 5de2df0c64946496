"""Issue 27, "Science details": BatchNorm scale initialisation, channel density of early-bird
retrains, the early-bird ranking of coupled groups, and the paper configs' recipes and sources."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from orchestrator.jobid import job_id
from orchestrator.spec import SpecError, load_spec
from trainers.jobs import DataConfig, TrainConfig, TrainJob
from trainers.models import build_model

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def _norm_scales(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


# ---- BatchNorm scale initialisation ------------------------------------------------------------


def test_bn_scale_init_fills_the_scales_and_leaves_every_other_parameter():
    default = build_model("small_cnn_bn", (64,), 10, seed=3)
    half = build_model("small_cnn_bn", (64,), 10, seed=3, bn_scale_init=0.5)
    # the default draw is U(0, 1): not constant (a draw of 8+ values all equal has probability 0)
    assert all(s.unique().numel() > 1 for s in _norm_scales(default))
    assert all(bool((s == 0.5).all()) for s in _norm_scales(half))
    scale_names = {f"{n}.weight" for n, m in half.named_modules() if isinstance(m, nn.BatchNorm2d)}
    d, h = default.state_dict(), half.state_dict()
    for name in d:
        if name not in scale_names:
            assert torch.equal(d[name], h[name]), name
    with pytest.raises(ValueError, match="no BatchNorm"):
        build_model("mlp_300_100", (64,), 10, seed=0, bn_scale_init=0.5)


def test_bn_scale_init_reaches_the_job_id_and_the_config_hash_only_when_set():
    from orchestrator.experiment import config_hash

    plain = TrainJob(train=TrainConfig(model="small_cnn_bn", data=DataConfig(), iterations=10), init_seed=0, data_seed=0)
    half = dataclasses.replace(plain, train=dataclasses.replace(plain.train, bn_scale_init=0.5))
    assert job_id("train", plain, {}) != job_id("train", half, {})
    # at its default the description is the one stored before the field existed: the id pinned in
    # tests/test_planner.py stays; here, the payload holds no trace of the field
    from orchestrator.jobid import job_payload

    assert "bn_scale_init" not in job_payload("train", plain, {})
    demo = load_spec(str(CONFIGS / "demo_structured.yaml"))
    default = load_spec(str(CONFIGS / "demo_structured.yaml"), ["bn_scale_init=null"])
    assert demo.train_config().bn_scale_init == 0.5 and default.train_config().bn_scale_init is None
    assert config_hash(demo) != config_hash(default)
    from orchestrator.experiment import identity_config

    assert "bn_scale_init" not in identity_config(default)


def test_bn_scale_init_needs_batchnorm():
    from orchestrator.planner import plan

    with pytest.raises(SpecError) as e:
        plan(load_spec(str(CONFIGS / "demo.yaml"), ["bn_scale_init=0.5"]))  # an MLP
    assert e.value.field == "bn_scale_init"


def test_early_bird_and_slimming_configs_start_from_the_references_half_scales():
    for name in ("demo_structured.yaml", "cifar10_vgg19_slimming.yaml"):
        spec = load_spec(str(CONFIGS / name))
        assert spec.pruning.early_bird is not None, name
        assert spec.bn_scale_init == 0.5, name


# ---- channel density of early-bird retrains ----------------------------------------------------


def test_early_bird_retrains_report_channel_density_and_keep_their_ids():
    from orchestrator.planner import plan

    jobs = plan(load_spec(str(CONFIGS / "demo_structured.yaml"))).jobs.values()
    retrains = [j for j in jobs if j.meta.role == "early_bird" and j.meta.level == 1]
    assert retrains and {j.spec.channel_report for j in retrains} == {("coupled", ())}
    for j in retrains:  # a measure, not part of the job: the id is the one without it
        assert job_id("train", dataclasses.replace(j.spec, channel_report=None), j.inputs) == j.id


def test_channel_density_of_a_mask_made_elsewhere_is_counted_over_the_reported_groups():
    from trainers import structure
    from trainers.pruning import full_mask
    from trainers.train import structured_measures

    model = build_model("small_cnn_bn", (64,), 10, seed=0)
    groups = structure.channel_groups(model, "block_internal")
    sizes = {g.name: g.size for g in groups}
    alive = {name: torch.arange(n) < (n // 2 if i == 0 else n) for i, (name, n) in enumerate(sizes.items())}
    mask = full_mask(model, ())
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    for name, part in structure.expand(groups, alive, shapes).items():
        mask[name] = mask[name] & part if name in mask else part
    expected = sum(int(a.sum()) for a in alive.values()) / sum(sizes.values())  # counted by hand
    assert expected < 1
    cfg = TrainConfig(model="small_cnn_bn", data=DataConfig(), iterations=10)
    retrain = TrainJob(train=cfg, init_seed=0, data_seed=0, channel_report=("block_internal", ()))
    got = structured_measures(retrain, model, mask, (64,))
    assert got["channel_density"] == pytest.approx(expected, abs=0)
    assert "channel_density" not in structured_measures(dataclasses.replace(retrain, channel_report=None),
                                                        model, mask, (64,))


# ---- early-bird ranking of coupled groups: said where it is done --------------------------------


def test_early_bird_ranks_coupled_groups_by_their_summed_scales_and_says_so():
    pytest.importorskip("torch_pruning")
    from trainers import early_bird, structure
    from trainers.jobs import EarlyBirdConfig

    model = build_model("small_cnn_bn", (64,), 10, seed=1)
    search = early_bird.Search(EarlyBirdConfig(groups="coupled"), model, 10, "/nonexistent", write=False)
    groups = structure.channel_groups(model, "coupled")
    params = dict(model.named_parameters())
    # independent: per group, the sum over its BatchNorms of |gamma|, groups in order
    by_hand = torch.cat([sum(params[f"{bn}.weight"].detach().double().abs() for bn in g.norms) for g in groups])
    assert any(len(g.norms) > 1 for g in groups)  # the stem and the block output meet at the add
    assert torch.equal(search.scores(model), by_hand)
    assert "sum of its producers' |gamma|" in (ROOT / "docs" / "design.md").read_text()
    assert "the sum of their |gamma|" in early_bird.__doc__


# ---- paper configs -----------------------------------------------------------------------------


def test_slimming_config_is_the_papers_vgg19_with_the_training_recipe_as_fine_tuning():
    path = CONFIGS / "cifar10_vgg19_slimming.yaml"
    spec = load_spec(str(path))
    assert spec.model == "cifar_vgg_19"
    assert spec.train.batch_size == 64 and spec.train.optimizer.lr == 0.1 and spec.train.optimizer.nesterov
    per_epoch = -(-50_000 // 64)
    assert spec.iterations == 160 * per_epoch
    assert spec.train.schedule.milestones == [80 * per_epoch, 120 * per_epoch]  # 50% and 75% of 160 epochs
    # fine-tuning = the training recipe on the kept weights: lr_rewind from k = 0, no fixed small rate
    assert "lr_rewind" in spec.pruning.retrain and "finetune" not in spec.pruning.retrain
    assert spec.rewind_iters == [0]
    assert spec.pruning.early_bird is not None
    assert "not implemented" not in path.read_text()
    assert not (CONFIGS / "cifar10_vgg16_slimming.yaml").exists()


def test_synflow_config_scores_on_a_random_sample_of_ten_per_class():
    from orchestrator.planner import plan

    spec = load_spec(str(CONFIGS / "cifar100_vgg16_synflow.yaml"))
    assert spec.pruning.at_init.scoring.sample == "random" and spec.pruning.at_init.scoring.examples_per_class == 10
    jobs = [j for j in plan(spec).jobs.values() if j.spec.at_init is not None]
    by_method = {j.spec.at_init.method: j.spec.at_init for j in jobs}
    assert by_method["snip"].sample == "random" and by_method["grasp"].sample == "random"
    assert by_method["synflow"].sample == "class_balanced"  # reads no data: the default, out of its id


def test_random_scoring_sample_is_the_first_examples_of_the_scoring_stream():
    from trainers.data.order import scoring_stream_seed
    from trainers.data.sources import open_data
    from trainers.methods.job import random_sample, scoring_batch

    data = open_data(DataConfig(name="digits", augment=False), torch.device("cpu"))
    x, y = random_sample(data, 5, 0, 100)
    # independent: the stream read as one batch of 100
    x1, y1 = next(data.train_stream(scoring_stream_seed(5, 0), 100, 0))
    assert torch.equal(x, x1) and torch.equal(y, y1)
    counts = torch.bincount(y, minlength=10)
    _, yb = scoring_batch(data, 5, 0, 10)
    assert torch.equal(torch.bincount(yb, minlength=10), torch.full((10,), 10))
    assert not torch.equal(counts, torch.full((10,), 10))  # a random draw of 100 is not balanced here


def test_random_sample_reaches_the_id_only_when_set():
    from trainers.jobs import AtInitConfig
    from orchestrator.jobid import job_payload

    cfg = TrainConfig(model="mlp_300_100", data=DataConfig(), iterations=10)
    balanced = TrainJob(train=cfg, init_seed=0, data_seed=0, at_init=AtInitConfig(method="snip", keep=(10,), examples_per_class=10))
    rand = dataclasses.replace(balanced, at_init=dataclasses.replace(balanced.at_init, sample="random"))
    assert '"sample"' not in job_payload("train", balanced, {})
    assert job_id("train", balanced, {}) != job_id("train", rand, {})


def test_imagenet_rewind_config_says_its_one_shot_source_is_secondary():
    text = (CONFIGS / "imagenet_resnet50_rewind.yaml").read_text()
    assert "SECONDARY" in text and "published-numbers.md" in text and "Maene" in text
