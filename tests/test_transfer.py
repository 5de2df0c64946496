"""Ticket transfer (Morcos et al. 2019; trainers/transfer.py, orchestrator/transfer_plan.py).

- The starting point, by an independent construction: the source's mask and W_k bitwise, the
  output layer as configured, the controls at the source's per-layer counts.
- The plan: the source's jobs carry the source experiment's own ids; a transfer job's id
  covers its source job's id; bad transfer sections name the field.
- End to end (`lth run` through Ray, `lth analyze`): a target run after the source
  experiment's jobs are in the store reuses them and trains only its own, and its transfer
  jobs start from the source's stored mask and W_k bitwise. `lth analyze A B`'s transfer
  table on two experiments' tables.
"""
from __future__ import annotations

import copy
import csv
import re

import pytest
import torch
import yaml

from conftest import REPO, lth_env, run_lth
from orchestrator.planner import plan
from orchestrator.spec import SpecError, load_raw, load_spec, validate_spec
from trainers import checkpoint
from trainers.jobs import TransferConfig
from trainers.models import build_model
from trainers.pruning import prunable_names
from trainers.transfer import transferred_start
from orchestrator.analysis.transfer import transfer_side_by_side, transfer_table

SOURCE_CFG = REPO / "configs" / "transfer_source_digits.yaml"
TARGET_CFG = REPO / "configs" / "demo_transfer.yaml"


def _source_ticket(classes: int = 10, seed: int = 3):
    """A small_cnn_bn W_k on 8x8 inputs and a random mask over its prunable tensors."""
    model = build_model("small_cnn_bn", (64,), classes, seed=seed)
    w = checkpoint.state_dict_cpu(model)
    gen = torch.Generator().manual_seed(seed)
    mask = {n: torch.rand(w[n].shape, generator=gen) < 0.3 for n in prunable_names(model)}
    return w, mask


def _target(classes: int, seed: int = 11):
    model = build_model("small_cnn_bn", (1, 28, 28), classes, seed=seed)  # another resolution: global pooling
    return checkpoint.state_dict_cpu(model), prunable_names(model)


def _counts(mask):
    return {n: int(m.sum()) for n, m in mask.items()}


def test_ticket_is_the_sources_mask_and_w_k_bitwise():
    w_k, mask = _source_ticket()
    w0, names = _target(10)
    weights, got = transferred_start(TransferConfig(output_layer="source"), w0, names, w_k, mask)
    assert set(weights) == set(w0) and set(got) == set(names)
    for n in w0:  # every tensor, the output layer and the BatchNorm buffers included
        assert torch.equal(weights[n], w_k[n]), n
    for n in names:
        assert torch.equal(got[n], mask[n]), n


@pytest.mark.parametrize("output_layer", ["fresh", "dense"])
def test_output_layer_when_classes_differ(output_layer):
    w_k, mask = _source_ticket(classes=10)
    w0, names = _target(5)
    cfg = TransferConfig(output_layer=output_layer, seed=7)
    weights, got = transferred_start(cfg, w0, names, w_k, mask)
    for n in w0:
        expected = w0[n] if n.startswith("fc.") else w_k[n]
        assert torch.equal(weights[n], expected), n
    for n in names:
        if n != "fc.weight":
            assert torch.equal(got[n], mask[n]), n
    if output_layer == "dense":
        assert bool(got["fc.weight"].all())
    else:  # the source output layer's density, on the target's output layer: round(d * size)
        density = mask["fc.weight"].sum().item() / mask["fc.weight"].numel()
        assert int(got["fc.weight"].sum()) == round(density * got["fc.weight"].numel())
        again = transferred_start(cfg, w0, names, w_k, mask)[1]["fc.weight"]
        assert torch.equal(again, got["fc.weight"])  # a pure function of the seed
    with pytest.raises(ValueError, match="fc.weight.*class counts differ"):
        transferred_start(TransferConfig(output_layer="source"), w0, names, w_k, mask)


def test_controls_keep_the_per_layer_counts():
    w_k, mask = _source_ticket()
    w0, names = _target(10)
    ticket_w, ticket_m = transferred_start(TransferConfig(output_layer="source", seed=5), w0, names, w_k, mask)
    rw, rm = transferred_start(TransferConfig(output_layer="source", control="random_mask", seed=5), w0, names, w_k, mask)
    assert _counts(rm) == _counts(mask)
    assert any(not torch.equal(rm[n], mask[n]) for n in names)
    assert all(torch.equal(rw[n], ticket_w[n]) for n in w0)  # the transferred weights
    fw, fm = transferred_start(TransferConfig(output_layer="source", control="fresh_weights", seed=5), w0, names, w_k, mask)
    assert all(torch.equal(fm[n], ticket_m[n]) for n in names)  # the ticket's mask
    assert all(torch.equal(fw[n], w0[n]) for n in w0)  # the target's own W0


def test_other_shapes_are_refused():
    w_k, mask = _source_ticket()
    w_k = dict(w_k, **{"conv.weight": torch.zeros(4, 1, 3, 3)})
    w0, names = _target(10)
    with pytest.raises(ValueError, match="conv.weight.*global pooling"):
        transferred_start(TransferConfig(output_layer="source"), w0, names, w_k, mask)


# ---- the plan --------------------------------------------------------------------------------


def _raw(**transfer) -> dict:
    raw = load_raw(str(TARGET_CFG))
    raw["data"] = {"name": "digits"}  # CI has no Fashion-MNIST: a digits target (another optimizer)
    raw["transfer"].update(transfer)
    return raw


def test_source_jobs_have_the_source_experiments_ids():
    source_plan = plan(validate_spec(load_raw(str(SOURCE_CFG))))
    target = plan(validate_spec(_raw()))
    sources = {jid: j for jid, j in target.jobs.items() if j.meta.role == "source"}
    assert set(sources) == set(source_plan.jobs)  # the dense run and its 3 levels, the same ids
    moved = [j for j in target.jobs.values() if j.meta.role == "transfer"]
    assert len(moved) == 3 * 3
    for j in moved:
        src = source_plan.jobs[j.meta.ticket_source]
        assert src.meta.level == j.meta.level and j.inputs["parent_mask"] == (src.id, "mask.pt")
        assert j.inputs["rewind_weights"][1] == "w_20.pt" and j.inputs["rewind_weights"][0] in source_plan.jobs
        assert (j.meta.ticket_source_data, j.meta.ticket_source_optimizer) == ("digits", "sgd")
        assert {src.id, j.inputs["rewind_weights"][0]} <= set(j.parents)  # a missing source job is trained first
        assert list(target.jobs).index(src.id) < list(target.jobs).index(j.id)  # parents first
    # A transfer job's id covers its source's: another source recipe, other transfer ids.
    raw = _raw()
    raw["transfer"]["source"] = dict(raw["transfer"]["source"], train=dict(raw["transfer"]["source"]["train"], iterations=301))
    other = plan(validate_spec(raw))
    ids = lambda p: {j.id for j in p.jobs.values() if j.meta.role == "transfer"}  # noqa: E731
    assert not ids(other) & ids(target)
    own = lambda p: {j.id for j in p.jobs.values() if j.meta.role == "level"}  # noqa: E731
    assert own(other) == own(target)  # the target's own IMP does not depend on the source


@pytest.mark.parametrize("change, field", [
    ({"levels": [4]}, "transfer.levels[0]"),
    ({"rewind_iter": 10}, "transfer.rewind_iter"),
    ({"replicate": 3}, "transfer.replicate"),
    ({"output_layer": "source", "source": {"data": {"name": "synthetic", "num_classes": 5, "image_size": 8,
                                                    "channels": 1}}}, "transfer.output_layer"),
    ({"source": {"model": "mlp_300_100"}}, "transfer.source.model"),
    ({"source": {"train": {"batch_size": "x"}}}, "transfer.source.train.batch_size"),
])
def test_bad_transfer_sections_name_the_field(change, field):
    raw = _raw()
    for key, value in change.items():
        if key == "source":
            src = copy.deepcopy(raw["transfer"]["source"])
            for k, v in value.items():
                src[k] = dict(src[k], **v) if isinstance(v, dict) and k != "data" else v
            raw["transfer"]["source"] = src
        else:
            raw["transfer"][key] = value
    with pytest.raises(SpecError) as e:
        validate_spec(raw)
    assert e.value.field == field, str(e.value)


def test_set_reaches_into_the_source_and_a_missing_source_file_is_named(tmp_path):
    spec = load_spec(str(TARGET_CFG), ["data.name=digits", "transfer.source.train.iterations=200"])
    assert spec.transfer.source_spec.train.iterations == 200
    with pytest.raises(SpecError, match="did you mean 'iterations'"):
        load_spec(str(TARGET_CFG), ["transfer.source.train.iteratons=200"])
    cfg = yaml.safe_load(TARGET_CFG.read_text())
    cfg["transfer"]["source"] = "nowhere.yaml"
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(SpecError, match="no such config file .*nowhere.yaml") as e:
        load_spec(str(tmp_path / "t.yaml"))
    assert e.value.field == "transfer.source"


def test_output_layer_auto_and_config_hash_of_configs_without_transfer():
    spec = validate_spec(_raw())
    assert spec.transfer.output_layer == "source"  # 10 classes both
    five = _raw()
    five["data"] = {"name": "synthetic", "num_classes": 5, "image_size": 8, "channels": 1}
    assert validate_spec(five).transfer.output_layer == "fresh"
    from orchestrator.experiment import identity_config

    assert "transfer" not in identity_config(validate_spec(load_raw(str(SOURCE_CFG))))


# ---- end to end ------------------------------------------------------------------------------


def test_transfer_sweep_end_to_end(tmp_path):
    """Source experiment first, then the transfer experiment in the same store: the source's
    jobs are reused, not retrained; the transfer jobs start from its stored mask and W_k."""
    shrink = {"iterations": 12, "eval_every": 0, "eval_train_examples": 64}
    src = load_raw(str(SOURCE_CFG))
    src["train"].update(shrink, schedule={"name": "constant", "warmup_iters": 0})
    src["sweep"]["rewind_iters"] = [4]
    src["pruning"]["levels"] = 2
    src["tracking"] = {"wandb": "disabled"}
    (tmp_path / "source.yaml").write_text(yaml.safe_dump(src))
    tgt = yaml.safe_load(TARGET_CFG.read_text())
    tgt["data"] = {"name": "digits"}
    tgt["train"].update(shrink)
    tgt["pruning"]["levels"] = 1
    tgt["sweep"]["rewind_iters"] = [0]
    tgt["transfer"].update(source="source.yaml", rewind_iter=4, levels=[2], controls=["random_mask"])
    tgt["tracking"] = {"wandb": "disabled"}
    (tmp_path / "target.yaml").write_text(yaml.safe_dump(tgt))
    store = tmp_path / "store"
    env = lth_env()
    from orchestrator.store import Store
    from orchestrator.tracking import resolve_settings
    from orchestrator.worker import JobRunner, WorkerContext

    # The source experiment's jobs, done in the store (in-process: one Ray start is enough here).
    st = Store(str(store))
    runner = JobRunner(WorkerContext(store_root=st.root, tracking=resolve_settings("disabled", "x", None, None)))
    for job in plan(validate_spec(src)).jobs.values():
        st.write_done(job.id, {**runner.run(job, 1), "attempts": 1})  # as the scheduler records it
    second = run_lth("run", str(tmp_path / "target.yaml"), "--store", str(store), env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    out = second.stdout + second.stderr
    # source: dense + 2 levels (3 jobs) reused; own IMP: dense + 1 level; 1 level x 2 transfer jobs
    assert "7 jobs planned: 3 done (reused, not rerun), 4 left to run" in out, out[-3000:]
    assert re.search(r"ran 4 jobs, 3 were already done, 0 failed", out), out[-3000:]

    from trainers.data.sources import describe
    from trainers.jobs import TrainPaths
    from trainers.train import starting_point

    p = plan(validate_spec(load_raw(str(tmp_path / "target.yaml"))))
    for job in (j for j in p.jobs.values() if j.meta.role == "transfer"):
        art = lambda role: st.local_path(Store.artifact(*job.inputs[role]))  # noqa: E731
        paths = TrainPaths(out_dir=str(tmp_path / "x"), parent_mask=art("parent_mask"), rewind_weights=art("rewind_weights"))
        info = describe(job.spec.train.data)
        model = build_model(job.spec.train.model, info.input_shape, info.num_classes, seed=job.spec.init_seed)
        weights, mask = starting_point(job.spec, paths, model, info)
        w_k, src_mask = checkpoint.load_weights(paths.rewind_weights), checkpoint.load_mask(paths.parent_mask)
        assert all(torch.equal(weights[n], w_k[n]) for n in w_k)
        if job.spec.transfer.control == "ticket":
            assert all(torch.equal(mask[n], src_mask[n]) for n in src_mask)
        else:
            assert _counts(mask) == _counts(src_mask)
        stored = checkpoint.load_mask(st.local_path(Store.artifact(job.id, "mask.pt")))  # what it trained with
        assert all(torch.equal(stored[n], mask[n]) for n in mask)

    name = tgt["name"]
    proc = run_lth("analyze", name, "--store", str(store), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((store / "reports" / name / "transfer.csv").open()))
    assert {r["family"] for r in rows} == {"target_dense", "target_imp", "transfer", "transfer_random_mask"}
    assert all(r["source_data"] == "digits" and r["source_optimizer"] == "sgd" for r in rows)
    assert (store / "reports" / name / "transfer_accuracy.png").is_file()


def test_transfer_side_by_side_of_two_experiments():
    def runs(acc):
        common = {"ticket_source_data": "digits", "ticket_source_optimizer": "sgd", "prune_strategy": "magnitude_global"}
        return [{"role": "transfer", "retrain": "transfer", "level": 1, "density": 0.5, "test_accuracy": acc, **common},
                {"role": "level", "retrain": "rewind", "level": 1, "density": 0.5, "test_accuracy": 0.7, **common},
                {"role": "source", "retrain": "rewind", "level": 1, "density": 0.5, "test_accuracy": 0.1, **common}]

    a, b = transfer_table(runs(0.6)), transfer_table(runs(0.9))
    assert a.to_pylist()[0]["family"] == "transfer" and len(a) == 2  # the source's own rows are not counted
    side = transfer_side_by_side({"A": a, "B": b, "C": None}, ["A", "B", "C"]).to_pylist()
    ticket = next(r for r in side if r["family"] == "transfer")
    assert ticket["acc_A"] == 0.6 and ticket["acc_B"] == 0.9
    assert ticket["acc_diff_B_minus_A"] == pytest.approx(0.3, abs=1e-12)  # a difference of two stored floats
    assert "acc_C" not in ticket
