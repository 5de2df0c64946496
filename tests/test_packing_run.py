"""`lth run` with `resources.pack` > 1: sibling train jobs trained together in one actor call.

Packing must not change results: with pack_strategy sequential, every artifact is bitwise the
unpacked sweep's and every table row equal (but for wall time, host, node and attempts); stacked
(the K networks as one network) the numbers agree up to float rounding.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import DEMO, tiny_args, tree_digest
from orchestrator.cli import main
from orchestrator.planner import plan
from orchestrator.spec import load_spec
from orchestrator.store import Store

VOLATILE = ["wall_seconds", "host", "node", "attempts"]
KEYS = {"runs": ["job_id"], "metrics": ["job_id", "iteration", "split"],
        "interpolation": ["pair_id", "split", "alpha"], "instability": ["pair_id", "split"]}


def _plan():
    return plan(load_spec(DEMO, [a for a in tiny_args() if a != "--set"]))


def _records(store: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (store / "artifacts").glob("*/done.json")}


def _rows(store: Path, table: str):
    t = Store(str(store)).read_table(table, "demo")
    return t.drop_columns([c for c in VOLATILE if c in t.schema.names]).sort_by([(k, "ascending") for k in KEYS[table]])


def _sweep(store: Path, *sets: str) -> int:
    return main(["run", DEMO, "--store", str(store), *tiny_args(*sets)])


@pytest.fixture(scope="module")
def unpacked(ray_session, tmp_path_factory):
    store = tmp_path_factory.mktemp("unpacked") / "store"
    assert _sweep(store, "tracking.wandb=disabled") == 0
    return store


def _packs(records: dict[str, dict]) -> set[frozenset[str]]:
    return {frozenset([j, *r["packed_with"]]) for j, r in records.items() if r.get("pack_size", 1) > 1}


def _assert_packs_are_siblings(packs: set[frozenset[str]]) -> None:
    jobs = _plan().jobs
    assert packs, "no job ran packed"
    for pack in packs:
        assert 2 <= len(pack) <= 3  # resources.pack
        specs = [jobs[j].spec for j in pack]
        assert all(jobs[j].kind == "train" for j in pack)
        assert len({(s.train, s.start_iter, s.stop_iter) for s in specs}) == 1


def test_sequential_packs_equal_the_unpacked_sweep_bitwise(unpacked, tmp_path, monkeypatch):
    p = _plan()
    by = {(j.meta.role, j.meta.rewind_iter, j.meta.level, j.meta.data_seed): j.id for j in p.jobs.values()
          if j.kind == "train"}
    # level 1 of k=0 is ready with the two level-0 children of k=0 (all train 0 -> 40): its
    # first attempt raises, failing its pack; every member then retries alone
    flaky = by[("level", 0, 1, 0)]
    monkeypatch.setenv("LTH_FAULT_INJECT", f"raise:{flaky}:1")
    store = tmp_path / "store"
    assert _sweep(store, "resources.pack=3", "resources.pack_strategy=sequential", "tracking.wandb=disabled") == 0

    records = _records(store)
    assert set(records) == set(p.jobs)
    packs = _packs(records)
    _assert_packs_are_siblings(packs)
    # the failed pack: each member lost one attempt and then ran alone
    retried = {j for j, r in records.items() if r["attempts"] == 2}
    assert flaky in retried and len(retried) >= 2
    assert all(records[j].get("pack_size", 1) == 1 for j in retried)
    assert all(r["attempts"] == 1 for j, r in records.items() if j not in retried)
    # results: bitwise the unpacked sweep's, and the same rows in every table
    trains = [j for j in p.jobs if p.jobs[j].kind == "train"]
    assert tree_digest(store, trains) == tree_digest(unpacked, trains)
    for table in KEYS:
        assert _rows(store, table).equals(_rows(unpacked, table)), table


def test_stacked_packs_match_the_unpacked_sweep(unpacked, tmp_path):
    p = _plan()
    store = tmp_path / "store"
    assert _sweep(store, "resources.pack=3", "resources.pack_strategy=stacked") == 0
    records = _records(store)
    assert set(records) == set(p.jobs)
    packs = _packs(records)
    _assert_packs_are_siblings(packs)
    # the packs really trained as one network (a fallback would say "sequential")
    assert {records[j]["result"]["strategy"] for pack in packs for j in pack} == {"stacked"}
    runs = {r["job_id"]: r for r in Store(str(store)).read_table("runs", "demo").to_pylist()}
    ref = {r["job_id"]: r for r in Store(str(unpacked)).read_table("runs", "demo").to_pylist()}
    assert set(runs) == set(ref)
    for job_id, r in runs.items():
        assert r["density"] == ref[job_id]["density"]  # the masks: exact
        # a function of the mask alone (the fraction of dense FLOPs the kept weights cost): exact
        assert r["flops_fraction"] is not None and r["flops_fraction"] == ref[job_id]["flops_fraction"], job_id
        assert r["test_accuracy"] == pytest.approx(ref[job_id]["test_accuracy"], abs=0.02), job_id
        assert r["test_loss"] == pytest.approx(ref[job_id]["test_loss"], rel=0.05, abs=0.01), job_id
    inst = {(r["pair_id"], r["split"]): r for r in Store(str(store)).read_table("instability", "demo").to_pylist()}
    ref_inst = {(r["pair_id"], r["split"]): r for r in Store(str(unpacked)).read_table("instability", "demo").to_pylist()}
    assert set(inst) == set(ref_inst)
    # one W&B run per job, packed or not (the run's id starts with the job id)
    # (the experiment's own run, orchestrator/wandb_group.py, is not a job's)
    wandb_jobs = [re.match(r"offline-run-\d{8}_\d{6}-([0-9a-f]+)-", d.name) for d in (store / "wandb").glob("offline-run-*")
                  if "-experiment-" not in d.name]
    assert sorted(m.group(1) for m in wandb_jobs) == sorted(p.jobs)
