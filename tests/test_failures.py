"""When things go wrong: a diverged run, errors not worth retrying, and what `lth status`,
`lth logs`, `lth plan` and `lth analyze` say about them (issue 21, items 1 to 3)."""
from __future__ import annotations

import json
import math
import re

import pytest

from conftest import DEMO, tiny_args
from orchestrator.cli import main
from orchestrator.failures import classify, divergence, one_line
from orchestrator.store import Store

# The reproduction, on the tiny demo: a learning rate of 1000 makes the dense run's loss NaN.
DIVERGE = ["name=diverge", "train.optimizer.lr=1000", "sweep.replicates=1", "sweep.rewind_iters=[0]",
           "pruning.levels=1", "sweep.branch.levels=[0,1]", "tracking.wandb=disabled",
           "pruning.at_init=null"]  # the reproduction, from before the demo pruned at init


def test_errors_from_the_jobs_own_checks_are_not_retried_others_are():
    from ray.exceptions import RayTaskError

    from trainers.checkpoint import CheckpointError

    def remote(exc: BaseException):  # what ray.get raises for an exception in the actor
        return RayTaskError("JobRunner.run", "Traceback (most recent call last):\n  ...\n"
                            f"{type(exc).__name__}: {exc}", exc).as_instanceof_cause()

    bad = classify(remote(ValueError("weights 'fc1.weight' hold NaN or inf among the unpruned entries")))
    assert not bad.retry and bad.reason.startswith("ValueError: weights 'fc1.weight' hold NaN")
    assert classify(remote(TypeError("x"))).retry is False
    assert classify(remote(RuntimeError("CUDA out of memory"))).retry is True
    # a file read mid-write may read whole next time: retried although a ValueError
    assert classify(remote(CheckpointError("mask file m.pt is corrupt"))).retry is True
    assert classify(OSError("stale file handle")).retry is True
    assert one_line("Traceback (most recent call last):\n  File x\nValueError: bad\n  more detail\n") == "ValueError: bad"


def test_divergence_is_a_non_finite_loss():
    ok = {"metrics": [{"iteration": 0, "loss": 2.3}], "test_loss": 0.2, "train_loss": 0.1, "end_iter": 40}
    assert divergence(ok) is None
    nan = {"metrics": [{"iteration": 0, "loss": 2.3}, {"iteration": 20, "loss": math.nan},
                       {"iteration": 40, "loss": math.inf}], "test_loss": math.nan, "train_loss": math.inf,
           "end_iter": 40}
    assert divergence(nan) == "test loss nan, train loss inf at iteration 40, not finite since iteration 20"
    # a job that stopped at its first non-finite training loss says where (trainers/train.py)
    stopped = {"metrics": [{"iteration": 0, "loss": 2.3}, {"iteration": 4, "loss": math.nan}], "test_loss": math.nan,
               "train_loss": math.nan, "end_iter": 4, "nonfinite_iter": 3}
    assert divergence(stopped) == "training loss not finite at iteration 3, training stopped at 4: test loss nan, train loss nan"


def test_a_deterministic_error_fails_at_once_naming_the_job(tmp_path, capsys):
    from orchestrator.jobqueue import JobQueue
    from orchestrator.planner import plan
    from orchestrator.progress import SweepProgress
    from orchestrator.scheduler import RunOptions, Scheduler
    from orchestrator.spec import load_spec
    from orchestrator.tracking import resolve_settings
    from orchestrator.worker import WorkerContext

    p = plan(load_spec(DEMO, [a for a in tiny_args() if a != "--set"]))
    store = Store(str(tmp_path / "store"))
    ctx = WorkerContext(store_root=store.root, tracking=resolve_settings("disabled", "p", None, None))
    sched = Scheduler(p, store, RunOptions(max_attempts=3, worker=ctx), SweepProgress("demo", live=False))
    dense = next(j for j in p.jobs.values() if not j.parents)
    queue = JobQueue(p, set())
    sched.summary.attempts[dense.id] = 1
    sched._retry_or_fail(dense.id, "Traceback ...\nValueError: bad input", queue, retry=False)
    assert dense.id in queue.failed and store.failed_record(dense.id)["attempts"] == 1  # not 3
    out = capsys.readouterr().out
    assert f"FAILED {dense.id} level r0 k0 L0 seed0 rewind attempt 1: ValueError: bad input (not retried" in out
    assert re.search(rf"blocked {len(p.jobs) - 1} jobs below {dense.id} \(level r0 k0 L0 seed0 rewind\), which "
                     "failed: ValueError: bad input", out), out


@pytest.mark.timeout(240)
def test_a_diverged_run_is_recorded_and_blocks_its_descendants_end_to_end(ray_session, tmp_path, capsys):
    """The issue's reproduction (shrunk): the dense run diverges; nothing below it runs, nothing
    is retried, and every command says so."""
    store = tmp_path / "store"
    args = ["--store", str(store), *tiny_args(*DIVERGE)]
    assert main(["run", DEMO, *args]) == 1
    out, err = capsys.readouterr()
    s = Store(str(store))
    jobs = s.planned_jobs("diverge")
    (dense,) = [j for j, info in jobs.items() if not info["parents"]]
    assert re.search(rf"done   {dense} level r0 k0 L0 seed0 rewind in [\d.]+s \(1/8\): DIVERGED: training loss not "
                     r"finite at iteration (\d+), training stopped at (\d+): test loss nan, train loss nan; test accuracy", out), out
    # the README's example shows what the command prints today (its words; its numbers are its run's)
    from pathlib import Path

    readme = " ".join((Path(DEMO).parent.parent / "README.md").read_text().split())
    said = re.search(r"DIVERGED: (training loss not finite at iteration) \d+, (training stopped at) \d+: "
                     r"(test loss nan, train loss nan; test accuracy)", out)
    assert all(phrase in readme for phrase in said.groups()), said.groups()
    assert (f"blocked 7 jobs below {dense} (level r0 k0 L0 seed0 rewind), which diverged" in out
            and "likely cause: a learning rate too high for the model (train.optimizer.lr = 1000" in out), out
    assert "1 diverged, 7 blocked" in out and f"diverged: {dense} level r0 k0 L0 seed0 rewind" in err
    # in the first seconds, before Ray is up: what is planned, what is reused, that Ray starts
    assert out.index("8 jobs planned: 0 done (reused, not rerun), 8 left to run") < out.index("starting a local Ray")
    # nothing below it ran, so nothing was retried (the issue saw 9 wasted attempts)
    artifacts = {p.name for p in (store / "artifacts").iterdir()}
    assert artifacts == {dense} and not (store / "artifacts" / dense / "failed.json").exists()
    runs = s.read_table("runs", "diverge").to_pylist()
    assert [(r["job_id"], r["diverged"]) for r in runs] == [(dense, True)]

    # lth status: the diverged job, and each blocked job naming it
    assert main(["status", "diverge", "--store", str(store), "--json"]) == 0
    (st,) = json.loads(capsys.readouterr().out)
    assert (st["diverged"], st["blocked"], st["failed"]) == (1, 7, 0)
    states = {p["job_id"]: (p["state"], p.get("blocked_by")) for p in st["problems"]}
    assert states[dense] == ("diverged", None)
    assert all(states[j] == ("blocked", dense) for j in jobs if j != dense)
    assert main(["status", "diverge", "--store", str(store)]) == 0
    text = capsys.readouterr().out
    assert f"diverge: diverged {dense[:12]} level r0 k0 L0 seed0 rewind: training loss not finite at iteration" in text
    assert re.search(rf"diverge: blocked  \w{{12}} branch r0 k0 L1 seed\d+ rewind: below {dense[:12]} "
                     r"\(level r0 k0 L0 seed0 rewind\), which diverged", text), text

    # lth logs of the successful (if diverged) job: one line per evaluation
    assert main(["logs", dense[:10], "--store", str(store)]) == 0
    log = capsys.readouterr().out
    evals = re.findall(r"eval iteration (\d+)/40: test loss (\S+) accuracy [\d.]+%, train loss \S+ accuracy "
                       r"[\d.]+%, lr ([\d.e+]+), images/s (\S+)", log)
    stopped = int(runs[0]["end_iter"])
    assert stopped < 20 and [int(e[0]) for e in evals] == [0, stopped], log  # nothing trained or evaluated on NaN after
    assert evals[0][2] == "1000" and evals[-1][1] == "nan" and evals[1][3] != "-"

    # lth analyze: the counts, and the dense accuracy marked as chance level
    assert main(["analyze", "diverge", "--store", str(store)]) == 0
    text = " ".join(capsys.readouterr().out.split())  # (rich wraps at 80 columns)
    assert "0 jobs failed, 1 diverged" in text and "7 blocked below them" in text, text
    assert re.search(r"Dense test accuracy: [\d.]+% \(n = 1 replicates\) \(chance\)", text), text

    # lth plan on it: what failed and what a rerun does; lth run again: nothing to do, no Ray
    assert main(["plan", DEMO, *args]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "1 diverged: not rerun" in text and "7 blocked below them" in text, text
    assert main(["run", DEMO, *args]) == 1
    out, _ = capsys.readouterr()
    assert "8 jobs planned: 1 done (reused, not rerun), 0 left to run, 7 blocked below a diverged job" in out
    assert "starting a local Ray" not in out and f"blocked 7 jobs below {dense}" in out
    assert {p.name for p in (store / "artifacts").iterdir()} == {dense}


def test_status_lists_failed_and_blocked_jobs_with_their_reason(tmp_path, capsys):
    # a -> b -> c: b failed after 3 attempts, so c waits on it
    store = Store(str(tmp_path / "store"))
    store.write_experiment("e", "name: e\n", {
        "a": {"parents": [], "kind": "train", "what": "level r0 k0 L0 seed0 rewind"},
        "b": {"parents": ["a"], "kind": "train", "what": "level r0 k0 L1 seed0 rewind"},
        "c": {"parents": ["b"], "kind": "train", "role": "level", "level": 2}})  # (a plan without "what")
    store.write_done("a", {"job_id": "a"})
    store.write_failed("b", "Traceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory\n", 3)
    assert main(["status", "e", "--store", store.root]) == 0
    text = capsys.readouterr().out
    assert "e: failed   b level r0 k0 L1 seed0 rewind, 3 attempts: RuntimeError: CUDA out of memory" in text, text
    assert "e: blocked  c level L2: below b (level r0 k0 L1 seed0 rewind), which failed" in text, text
    assert main(["status", "e", "--store", store.root, "--json"]) == 0
    (st,) = json.loads(capsys.readouterr().out)
    assert st["problems"] == [
        {"job_id": "b", "state": "failed", "what": "level r0 k0 L1 seed0 rewind", "attempts": 3,
         "reason": "RuntimeError: CUDA out of memory"},
        {"job_id": "c", "state": "blocked", "what": "level L2", "attempts": None, "blocked_by": "b",
         "reason": "below b (level r0 k0 L1 seed0 rewind), which failed"}]


def test_a_failed_jobs_log_holds_its_own_traceback_once_per_attempt(tmp_path, capsys):
    from orchestrator.worker import job_log

    store = Store(str(tmp_path / "store"))
    for attempt in (1, 2):
        with pytest.raises(ValueError), job_log(store, ["j1"], attempt):
            print("working")
            raise ValueError(f"bad input, attempt {attempt}")
    assert main(["logs", "j1", "--store", store.root]) == 0
    log = capsys.readouterr().out
    assert log.count("Traceback (most recent call last)") == 2 and "ray::" not in log
    assert re.findall(r"ValueError: bad input, attempt (\d)", log) == ["1", "2"]
