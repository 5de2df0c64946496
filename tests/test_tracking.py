"""W&B tracking decisions, names and error reporting (real wandb, offline; no Ray)."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from conftest import DEMO, tiny_args
from orchestrator.planner import plan
from orchestrator.spec import load_spec
from orchestrator.tracking import JobTracker, TrackingSettings, decide_mode, resolve_settings, run_name, run_tags


def _plan():
    return plan(load_spec(DEMO, [a for a in tiny_args() if a != "--set"]))


def test_online_with_an_unreachable_service_falls_back_to_offline_once(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:1")  # nothing listens there
    started = time.time()
    with pytest.warns(UserWarning, match=r"service does not answer \(127\.0\.0\.1:1: Connection refused\)") as caught:
        settings = resolve_settings("online", "p", None, str(tmp_path))
    assert time.time() - started < 10  # one refused connection, not W&B's retries per job
    assert settings.mode == "offline" and len(caught) == 1


def test_online_without_a_key_is_offline_for_run_and_analyze_alike(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    mode, warning = decide_mode("online")
    assert mode == "offline" and "no API key" in warning
    assert decide_mode("offline") == ("offline", None) and decide_mode("disabled") == ("disabled", None)
    # a key in netrc counts, as `wandb login` leaves it (analyze once looked at WANDB_API_KEY only)
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:1")
    mode, warning = decide_mode("online")
    assert mode == "offline" and "does not answer" in warning  # the key was found; the service was not


def test_run_names_are_readable_and_unique():
    p = _plan()
    names = {job_id: run_name(job) for job_id, job in p.jobs.items()}
    assert len(set(names.values())) == len(names)
    for job in p.jobs.values():
        m = job.meta
        if job.kind == "train" and m.role == "level":
            assert names[job.id] == f"r{m.replicate}-k{m.rewind_iter}-L{m.level}-s{m.data_seed}-{job.id[:8]}"
        if m.role == "pai":  # the method and its ablation: snip+shuffle-r0-k0-L2-s0
            ablation = m.retrain.removeprefix("pai_")
            method = m.prune_strategy + ("" if ablation == "rewind" else f"+{ablation}")
            assert names[job.id] == f"{method}-r{m.replicate}-k{m.rewind_iter}-L{m.level}-s{m.data_seed}-{job.id[:8]}"
        else:
            assert re.fullmatch(r"([a-z_]+-)*r\d+-k\d+-L\d+(-s\d+)?-[0-9a-f]{8}", names[job.id]), names[job.id]
        tags = run_tags(job)
        assert {m.role, f"k{m.rewind_iter}", f"L{m.level}"} <= set(tags) and len(set(tags)) == len(tags), tags
    assert run_name(next(iter(p.jobs.values())), attempt=2).endswith("-a2")


def test_a_wandb_error_in_a_job_is_kept_for_the_driver(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    job = next(iter(_plan().jobs.values()))
    tracker = JobTracker(TrackingSettings(mode="offline", dir=str(not_a_dir / "wandb")), job, 1)
    with pytest.warns(UserWarning, match="W&B init failed"):
        tracker.start()
    assert tracker.run is None and len(tracker.problems) == 1 and "init failed" in tracker.problems[0]


def test_run_names_are_unique_across_lineages_and_say_which():
    """Levels of the rewind, lr_rewind, finetune and control lineages share (replicate, k, level,
    seed): the name says the lineage, so no two runs of a group share a name (issue 21, item 8)."""
    p = plan(load_spec(DEMO, [a for a in tiny_args("pruning.retrain=[rewind, lr_rewind, finetune]",
                                                     "pruning.controls=[random_prune, random_reinit]")
                              if a != "--set"]))
    names = [run_name(job) for job in p.jobs.values()]
    assert len(set(names)) == len(names)
    lv1 = {run_name(j) for j in p.jobs.values() if j.kind == "train" and j.meta.role == "level"
           and (j.meta.replicate, j.meta.rewind_iter, j.meta.level) == (0, 10, 1)}
    assert {n[:-9] for n in lv1} == {f"{prefix}r0-k10-L1-s0" for prefix in ("", "lr_rewind-", "finetune-", "random_prune-", "reinit-")}
    child = next(j for j in p.jobs.values() if j.meta.role == "branch" and j.meta.level == 2 and j.meta.rewind_iter == 10)
    assert run_name(child) == f"branch-r0-k10-L2-s{child.meta.data_seed}-{child.id[:8]}"  # the README's example


def test_run_names_are_unique_in_a_project_and_tags_are_not_repeated():
    """The experiments of a store log into one W&B project: a fork (another learning rate) has
    jobs at the same coordinates, and two early-bird tickets (fractions 0.3 and 0.5) retrain at
    the same ones; every name is still unique, and a shared job keeps one name."""
    demo = plan(load_spec(DEMO, []))
    fork = plan(load_spec(DEMO, ["name=demo-lr", "train.optimizer.lr=0.04"]))
    structured = plan(load_spec(str(Path(DEMO).parent / "demo_structured.yaml"), []))
    jobs = {**demo.jobs, **fork.jobs, **structured.jobs}  # (by id: a job two plans share is one run)
    names = [run_name(j) for j in jobs.values()]
    assert len(set(names)) == len(names) == len(jobs)
    eb = sorted(run_name(j) for j in structured.jobs.values() if j.meta.role == "early_bird" and j.meta.retrain == "eb_rewind")
    assert [n.split("-", 1)[0] for n in eb] == ["early_bird_p0.3", "early_bird_p0.5"], eb
    interp = next(j for j in demo.jobs.values() if j.kind == "interpolate")
    assert run_tags(interp) == ["interpolate", f"k{interp.meta.rewind_iter}", f"L{interp.meta.level}", interp.meta.retrain]
