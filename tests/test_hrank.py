"""HRank (Lin et al., CVPR 2020) as a channel score (issue 28): oracles for the rank, its
invariance to a positive rescaling of a channel, an independent computation on a small CNN, and
the score used by a train job's head through the channel machinery."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from trainers import checkpoint, structure
from trainers.api import run_train_job
from trainers.data.order import scoring_stream_seed
from trainers.data.sources import open_data
from trainers.jobs import DataConfig, OptimizerConfig, PruneConfig, TrainConfig, TrainJob, TrainPaths
from trainers.methods.channels import average_rank, hrank_scores, prune_channels
from trainers.models import build_model
from trainers.runtime import Runtime

torch.set_num_threads(1)


def _outer(*pairs):
    return sum(torch.outer(torch.tensor(u, dtype=torch.float32), torch.tensor(v, dtype=torch.float32)) for u, v in pairs)


def test_rank_of_hand_built_feature_maps():
    e = torch.eye(5)
    maps = torch.zeros(2, 3, 5, 5)
    maps[0, 0] = _outer(([1, 2, 3, 4, 5], [1, -1, 0, 2, 1]))                    # rank 1
    maps[0, 1] = torch.diag(torch.tensor([3.0, 1.0, 2.0, 0.0, 0.0]))            # rank 3
    maps[0, 2] = 0                                                              # rank 0
    maps[1, 0] = e[0:1].T @ e[1:2] + e[2:3].T @ e[4:5]                          # rank 2
    maps[1, 1] = torch.eye(5) * 7                                               # rank 5
    maps[1, 2] = torch.ones(5, 5)                                               # rank 1
    assert average_rank(maps).tolist() == [3.0, 8.0, 1.0]  # summed over the two images


def _model_and_batches(seed=0):
    model = build_model("small_cnn_bn", (64,), 10, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # shifts and statistics away from the init, so maps are not all alike
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.normal_(0, 0.5, generator=gen)
                m.running_mean.normal_(0, 0.3, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
    data = open_data(DataConfig(name="digits", augment=False), torch.device("cpu"))
    stream = data.train_stream(7, 64, 0)
    return model, [next(stream)[0] for _ in range(3)]


def test_selection_is_invariant_to_a_positive_rescaling_of_a_channel():
    model, batches = _model_and_batches()
    groups = structure.channel_groups(model, "block_internal")
    weights = checkpoint.state_dict_cpu(model)
    cfg = PruneConfig(fraction=0.4, granularity="channel", channel_score="hrank", strategy="magnitude_global")
    alive = {g.name: torch.ones(g.size, dtype=torch.bool) for g in groups}
    scores = hrank_scores(model, weights, groups, batches)
    assert len({float(v) for s in scores.values() for v in s}) > 3  # the ranking is not a tie
    chosen = prune_channels(weights, alive, groups, cfg, scores=scores)
    for g in groups:
        for c, factor in ((0, 4.0), (g.size - 1, 0.25), (g.size // 2, 3.0)):
            # channel c's map times a: a ReLU(gamma (x - mu) / sigma + beta) = ReLU(a gamma ... + a beta),
            # so its scale and shift times a; its consumers' input slice divided by a keeps every later
            # map as it was (a power of two exactly, 3.0 up to rounding)
            scaled = dict(weights)
            for bn in g.norms:
                for part in ("weight", "bias"):
                    t = scaled[f"{bn}.{part}"].clone()
                    t[c] *= factor
                    scaled[f"{bn}.{part}"] = t
            for consumer, k in g.consumers:
                t = scaled[f"{consumer}.weight"].clone()
                t[:, c * k:(c + 1) * k] /= factor
                scaled[f"{consumer}.weight"] = t
            again = hrank_scores(model, scaled, groups, batches)
            assert all(torch.equal(again[n], scores[n]) for n in scores), (g.name, c, factor)
            assert all(torch.equal(a, b) for a, b in zip(prune_channels(scaled, alive, groups, cfg, scores=again).values(),
                                                         chosen.values()))
    # a negative factor is no rescaling of the map: ReLU cuts the other half, the rank changes
    flipped = dict(weights)
    g = groups[0]
    for bn in g.norms:
        flipped[f"{bn}.weight"] = -flipped[f"{bn}.weight"]
        flipped[f"{bn}.bias"] = -flipped[f"{bn}.bias"]
    assert not torch.equal(hrank_scores(model, flipped, groups, batches)[g.name], scores[g.name])


def test_scores_equal_an_independent_computation_on_a_small_cnn():
    model, batches = _model_and_batches(seed=2)
    model.eval()
    groups = structure.channel_groups(model, "block_internal")
    assert [g.name for g in groups] == ["block.conv1", "conv2"]
    scores = hrank_scores(model, checkpoint.state_dict_cpu(model), groups, batches)

    # independent: the forward pass written out module by module, ranks by numpy's SVD
    def ranks(maps: torch.Tensor) -> np.ndarray:
        a = maps.detach().numpy()
        return np.array([[np.linalg.matrix_rank(a[i, c]) for c in range(a.shape[1])] for i in range(a.shape[0])]).sum(0)

    m = model
    totals = {"block.conv1": np.zeros(8), "conv2": np.zeros(16)}
    images = 0
    with torch.no_grad():
        for x in batches:
            x = x.reshape(x.shape[0], 1, 8, 8)
            stem = torch.relu(m.bn(m.conv(x)))
            inner = torch.relu(m.block.bn1(m.block.conv1(stem)))
            totals["block.conv1"] += ranks(inner)
            out = torch.relu(m.block.bn2(m.block.conv2(inner)) + stem)
            totals["conv2"] += ranks(torch.relu(m.bn2(m.conv2(out))))
            images += x.shape[0]
    for name, total in totals.items():
        assert scores[name].tolist() == (total / images).tolist(), name


CFG = TrainConfig(model="small_cnn_bn", data=DataConfig(name="digits"), iterations=20, batch_size=32,
                  optimizer=OptimizerConfig(lr=0.05, momentum=0.9), eval_train_examples=64)


def test_a_level_pruned_by_hrank_in_the_jobs_head(tmp_path):
    rt = Runtime(device=torch.device("cpu"))
    dense = run_train_job(TrainJob(train=CFG, init_seed=0, data_seed=1, save_iters=(0,)),
                          TrainPaths(out_dir=str(tmp_path / "dense")), rt)
    cfg = PruneConfig(fraction=0.3, granularity="channel", channel_score="hrank", groups="block_internal",
                      rank_batches=2, rank_batch_size=50)
    job = TrainJob(train=CFG, init_seed=0, data_seed=1, prune=cfg)
    res = run_train_job(job, TrainPaths(out_dir=str(tmp_path / "l1"), parent_weights=dense.weights_path,
                                        parent_mask=dense.mask_path, rewind_weights=dense.saved_weights[0]), rt)
    assert res.channel_density == pytest.approx((24 - math.ceil(0.3 * 24)) / 24)  # exact count: 8 + 16 channels
    # the same selection from the same images, gathered here
    model = build_model("small_cnn_bn", (64,), 10, seed=0)
    groups = structure.channel_groups(model, "block_internal")
    data = open_data(CFG.data, torch.device("cpu"))
    stream = data.train_stream(scoring_stream_seed(1, 0), 50, 0)
    parent = checkpoint.load_weights(dense.weights_path)
    scores = hrank_scores(model, parent, groups, [next(stream)[0] for _ in range(2)])
    alive = {g.name: torch.ones(g.size, dtype=torch.bool) for g in groups}
    expected = prune_channels(parent, alive, groups, cfg, scores=scores)
    got = structure.alive_channels(groups, checkpoint.load_mask(res.mask_path))
    assert all(torch.equal(got[n], expected[n]) for n in expected)


def test_hrank_images_reach_the_id_only_with_hrank():
    from orchestrator.jobid import job_payload
    from orchestrator.spec import load_spec

    l1 = load_spec("configs/demo_structured.yaml", ["pruning.channel_score=l1_filter", "pruning.hrank.batches=3"])
    assert l1.prune_config().rank_batches == 5  # not read by l1_filter: the default, out of the id
    hr = load_spec("configs/demo_structured.yaml", ["pruning.channel_score=hrank", "pruning.hrank.batches=3",
                                                    "pruning.hrank.batch_size=64"])
    assert (hr.prune_config().rank_batches, hr.prune_config().rank_batch_size) == (3, 64)
    plain = TrainJob(train=CFG, init_seed=0, data_seed=0, prune=PruneConfig(granularity="channel", channel_score="hrank"))
    assert "rank_batch" not in job_payload("train", plain, {})
    more = dataclasses.replace(plain, prune=dataclasses.replace(plain.prune, rank_batches=6))
    assert "rank_batches" in job_payload("train", more, {})


def test_hrank_paper_config_plans():
    from orchestrator.planner import plan
    from orchestrator.spec import load_spec

    spec = load_spec("configs/cifar10_vgg16_hrank.yaml")
    assert spec.pruning.channel_score == "hrank" and (spec.pruning.hrank.batches, spec.pruning.hrank.batch_size) == (5, 128)
    jobs = plan(spec).jobs.values()
    assert {j.spec.prune.channel_score for j in jobs if j.spec.prune is not None} == {"hrank"}


def test_more_images_a_batch_than_the_training_set_is_refused():
    from orchestrator.spec import SpecError, load_spec

    with pytest.raises(SpecError) as e:
        load_spec("configs/demo_structured.yaml", ["pruning.channel_score=hrank", "pruning.hrank.batch_size=5000"])
    assert e.value.field == "pruning.hrank.batch_size" and "1437" in str(e.value)
