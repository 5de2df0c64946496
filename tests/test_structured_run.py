"""`lth run` and `lth analyze` end to end on a tiny structured + early-bird sweep (Ray, CPU)."""
from __future__ import annotations

import pytest

from conftest import REPO
from orchestrator.cli import main
from orchestrator.planner import plan
from orchestrator.schemas import TABLES
from orchestrator.spec import load_spec
from orchestrator.store import Store

CONFIG = str(REPO / "configs" / "demo_structured.yaml")
TINY = [
    "train.iterations=92",  # 4 epochs of 23 iterations
    "train.schedule.milestones=[60]",
    "train.eval_every=46",
    "train.eval_train_examples=128",
    "pruning.levels=1",
    "pruning.early_bird.fractions=[0.3]",
    "pruning.early_bird.queue=2",
    "pruning.early_bird.threshold=0.5",
    "tracking.wandb=disabled",
]


def test_structured_and_early_bird_sweep_end_to_end(ray_session, tmp_path, capsys):
    pytest.importorskip("torch_pruning")  # the demo's groups are coupled
    store_dir = tmp_path / "store"
    args = [a for s in TINY for a in ("--set", s)]
    assert main(["run", CONFIG, "--store", str(store_dir), *args]) == 0
    p = plan(load_spec(CONFIG, TINY))
    store = Store(str(store_dir))
    runs = {r["job_id"]: r for r in store.read_table("runs", "demo_structured").to_pylist()}
    assert set(runs) == set(p.jobs)
    level1 = [r for r in runs.values() if r["role"] == "level" and r["level"] == 1]
    assert {(r["retrain"], r["prune_strategy"]) for r in level1} == {
        ("rewind", "magnitude_global"), ("rewind", "random"), ("reinit", "magnitude_global")}
    for r in level1:  # 32 coupled channels, ceil(0.3 x 32) = 10 removed
        assert r["granularity"] == "channel" and r["channel_density"] == pytest.approx(22 / 32)
        assert 0 < r["flops_fraction"] < 1
    eb = store.read_table("early_bird", "demo_structured").to_pylist()
    assert [(d["fraction"], d["detected"], d["detect_epoch"]) for d in eb] == [(0.3, True, 1)]
    assert store.read_table("early_bird", "demo_structured").schema.names == TABLES["early_bird"].names
    retrains = sorted(r["retrain"] for r in runs.values() if r["role"] == "early_bird")
    assert retrains == ["eb_continue", "eb_reinit", "eb_rewind", "eb_search"]
    for r in runs.values():  # the retrains are channel-pruned: their density counts the search's ticket
        if r["role"] == "early_bird" and r["retrain"] != "eb_search":
            assert r["channel_density"] == pytest.approx(eb[0]["channels_kept"] / 32), r["retrain"]
    cont = next(r for r in runs.values() if r["retrain"] == "eb_continue")
    assert cont["start_iter"] == eb[0]["detect_iter"] == 23
    capsys.readouterr()
    assert main(["analyze", "demo_structured", "--store", str(store_dir)]) == 0
    report = store_dir / "reports" / "demo_structured"
    for stem in ("structured", "early_bird", "early_bird_distances"):
        assert (report / f"{stem}.csv").is_file(), stem
    assert (report / "early_bird_distances.png").is_file()
    html = (report / "report.html").read_text()
    assert "Early-bird: mask distance between every two epochs" in html and "Structured pruning" in html
