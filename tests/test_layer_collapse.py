"""Layer collapse (issue 28): a train job records whether its mask disconnects the network (a
prunable layer with no weight left, or no path of kept weights from input to output)."""
from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from trainers import checkpoint
from trainers.api import run_train_job
from trainers.connectivity import disconnection
from trainers.jobs import DataConfig, OptimizerConfig, TrainConfig, TrainJob, TrainPaths
from trainers.models import build_model
from trainers.pruning import full_mask
from trainers.runtime import Runtime

torch.set_num_threads(1)


def _mlp_mask(into_hidden2_from: int):
    """LeNet-300-100 on 8x8 digits: hidden.0 keeps only the weights into unit 0; hidden.2 keeps
    only the weights reading unit `into_hidden2_from`; fc keeps everything. Every layer keeps
    weights, and a path exists exactly when hidden.2 reads unit 0."""
    model = build_model("mlp_300_100", (64,), 10, seed=0)
    mask = full_mask(model, ())
    mask["hidden.0.weight"] = torch.zeros_like(mask["hidden.0.weight"])
    mask["hidden.0.weight"][0, :] = True
    mask["hidden.2.weight"] = torch.zeros_like(mask["hidden.2.weight"])
    mask["hidden.2.weight"][:, into_hidden2_from] = True
    return model, mask


def test_a_mask_without_a_path_is_flagged_and_one_with_a_path_is_not():
    model, cut = _mlp_mask(into_hidden2_from=1)
    assert all(bool(m.any()) for m in cut.values())  # no layer is empty: only the path test sees it
    assert disconnection(model, cut, cut, (64,)) == "no path of kept weights from the input to the output"
    model, joined = _mlp_mask(into_hidden2_from=0)
    assert disconnection(model, joined, joined, (64,)) is None
    dense = full_mask(model, ())
    assert disconnection(model, dense, dense, (64,)) is None


def test_an_empty_layer_is_named():
    model = build_model("mlp_300_100", (64,), 10, seed=0)
    mask = full_mask(model, ())
    mask["hidden.2.weight"] = torch.zeros_like(mask["hidden.2.weight"])
    assert disconnection(model, mask, mask, (64,)) == "layer hidden.2.weight has no weight left"


def test_a_residual_shortcut_keeps_the_network_connected_and_a_cut_after_it_does_not():
    model = build_model("small_cnn_bn", (64,), 10, seed=0)
    mask = full_mask(model, ())
    # the block's second convolution keeps one weight that reads nothing alive (its input channel 0
    # is fed by conv1's filter 0, which is gone): the block's own path is cut, the shortcut is not
    for name in ("block.conv1.weight", "block.conv2.weight"):
        mask[name] = torch.zeros_like(mask[name])
    mask["block.conv1.weight"][1, 0, 1, 1] = True
    mask["block.conv2.weight"][0, 0, 1, 1] = True
    assert disconnection(model, mask, mask, (64,)) is None
    mask["conv2.weight"] = torch.zeros_like(mask["conv2.weight"])
    mask["conv2.weight"][0, 0, 1, 1] = True
    mask["fc.weight"] = torch.zeros_like(mask["fc.weight"])
    mask["fc.weight"][:, 1] = True  # reads conv2's channel 1, which nothing feeds
    assert disconnection(model, mask, mask, (64,)) == "no path of kept weights from the input to the output"


CFG = TrainConfig(model="mlp_300_100", data=DataConfig(name="digits"), iterations=5, batch_size=32,
                  optimizer=OptimizerConfig(lr=0.05), eval_train_examples=64)


def test_a_train_job_records_it_and_the_done_line_and_analyze_say_so(tmp_path):
    from orchestrator.scheduler import _key_result

    rt = Runtime(device=torch.device("cpu"))
    model, cut = _mlp_mask(into_hidden2_from=1)
    w = checkpoint.state_dict_cpu(model)
    checkpoint.save(w, str(tmp_path / "w.pt"))
    checkpoint.save(cut, str(tmp_path / "cut.pt"))
    _, joined = _mlp_mask(into_hidden2_from=0)
    checkpoint.save(joined, str(tmp_path / "joined.pt"))
    job = TrainJob(train=CFG, init_seed=0, data_seed=0)  # prune None: the parent's mask as it is
    results = {}
    for name in ("cut", "joined"):
        results[name] = run_train_job(job, TrainPaths(out_dir=str(tmp_path / name), parent_mask=str(tmp_path / f"{name}.pt"),
                                                      rewind_weights=str(tmp_path / "w.pt")), rt)
    assert results["cut"].disconnected is True and "no path" in results["cut"].disconnection
    assert results["joined"].disconnected is False and results["joined"].disconnection is None
    import dataclasses

    line = _key_result({"kind": "train", "result": dataclasses.asdict(results["cut"])})
    assert "DISCONNECTED: no path" in line
    assert "DISCONNECTED" not in _key_result({"kind": "train", "result": dataclasses.asdict(results["joined"])})

    # rows: the runs column; analyze's note counts the disconnected jobs (an old part without the
    # column reads as null, never as disconnected)
    from orchestrator.analysis import collapse_line
    from orchestrator.schemas import file_schema
    from orchestrator.store import Store

    root = tmp_path / "store"
    part = root / "results" / "runs" / "experiment=x"
    part.mkdir(parents=True)
    schema = file_schema("runs")
    base = {n: None for n in schema.names}
    rows = [dict(base, job_id="a", role="pai", retrain="pai_invert", prune_strategy="synflow", disconnected=True),
            dict(base, job_id="b", role="level", retrain="rewind", prune_strategy="magnitude_global", disconnected=False)]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), part / "part-0.parquet")
    old = pa.Table.from_pylist([dict(base, job_id="c", role="level")], schema=schema).drop(["disconnected"])
    pq.write_table(old, part / "part-1.parquet")
    line = collapse_line(Store(str(root)), "x")
    assert line.startswith("1 of 3 train jobs have a mask that disconnects the network") and "pai synflow pai_invert" in line
    assert collapse_line(Store(str(root)), "nothing-here") is None


def test_inverted_synflow_on_the_demo_mlp_is_flagged():
    """The known case: inverted SynFlow keeps the lowest synaptic flow, which empties whole layers
    within a few rounds (5 here, at the demo's first density of 50%); SynFlow itself does not."""
    from trainers.methods import ScoreInputs, compute_mask

    model = build_model("mlp_300_100", (64,), 10, seed=0)
    mask = full_mask(model, ())
    weights = checkpoint.state_dict_cpu(model)
    keep = [sum(int(m.numel()) for m in mask.values()) // 2]
    inp = ScoreInputs(weights=weights, mask=mask, model=model, input_shape=(64,))
    inverted = compute_mask("synflow", inp, keep, "global", invert=True, iterations=5)
    assert disconnection(model, inverted, inverted, (64,)) is not None
    plain = compute_mask("synflow", inp, keep, "global", iterations=5)
    assert disconnection(model, plain, plain, (64,)) is None


def test_a_network_with_a_parameter_the_rule_does_not_cover_is_not_measured():
    from trainers.connectivity import UNMEASURED
    from trainers.train import collapse

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)
            self.gain = torch.nn.Parameter(torch.ones(2))  # neither Conv/Linear nor BatchNorm

        def forward(self, x):
            return self.fc(x) * self.gain

    net = Scaled()
    mask = {"fc.weight": torch.tensor([[True, False, False, False], [False] * 4])}
    assert disconnection(net, mask, mask, (4,)) == UNMEASURED
    assert collapse(net, mask, mask, (4,)) == {"disconnected": None, "disconnection": None}
