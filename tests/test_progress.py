"""What a sweep shows while it runs (ETA, done lines, timestamps) and `lth status` (no Ray)."""
from __future__ import annotations

import re

from orchestrator.progress import SweepProgress
from orchestrator.scheduler import _key_result


def test_eta_is_weighted_by_the_work_left(capsys):
    progress = SweepProgress("e", live=False)
    # one 10-iteration job done in 10 s: 1 s per iteration; 80 iterations left on one worker
    progress.start(total=4, done=0, work={"a": ("train", 10), "b": ("train", 40), "c": ("train", 40),
                                          "p": ("interpolate", 3)})
    progress.workers = 1
    assert progress.eta() == "?"
    progress.counts.done = 1
    progress.job_finished("a", "level", 10.0)
    # the interpolation's rate is unknown yet: counted at the slowest known rate (1 s per unit)
    assert progress.eta() == "1m23s"  # (40 + 40 + 3) s; a mean over jobs would say 30 s
    progress.workers = 2
    assert progress.eta() == "0m42s"  # 41.5 s, rounded


def test_log_lines_carry_a_timestamp_and_done_lines_the_key_result(capsys):
    progress = SweepProgress("e", live=False)
    progress.start(total=1, done=0, work={"j": ("train", 5)})
    progress.counts.done = 1
    record = {"kind": "train", "result": {"test_accuracy": 0.91234, "density": 0.25}}
    progress.job_finished("j", "level r0 k0 L2", 3.0, _key_result(record))
    lines = capsys.readouterr().out.splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[e\] ", line) for line in lines), lines
    assert lines[-1].endswith("done   j level r0 k0 L2 in 3.0s (1/1): test accuracy 91.23%, density 25%")
    interp = {"kind": "interpolate", "result": {"instability": [{"split": "test", "barrier": 0.0125},
                                                                {"split": "train", "barrier": -0.001}]}}
    assert _key_result(interp) == "test barrier +1.25 pp, train barrier -0.10 pp"


def _store_with(tmp_path, jobs: dict, done=(), failed=(), running=(), driver=None):
    from orchestrator.store import Store

    store = Store(str(tmp_path / "store"))
    store.write_experiment("e", "name: e\n", jobs)
    for j in done:
        store.write_done(j, {"job_id": j})
    for j in failed:
        store.write_failed(j, "boom", 3)
    if driver is not None:
        store.write_json("locks/e.lock", driver)
        store.write_json("experiments/e/heartbeat.json", {**driver, "running": list(running), "time": 0.0})
    return store


def test_status_tells_running_pending_blocked_and_failed(tmp_path, capsys):
    import json
    import os
    import socket

    from orchestrator.cli import main
    from orchestrator.progress import experiment_status

    # a -> b -> c, a -> d; e alone. b failed (so c is blocked), d runs, e waits for a worker
    jobs = {"a": {"parents": []}, "b": {"parents": ["a"]}, "c": {"parents": ["b"]}, "d": {"parents": ["a"]},
            "e": {"parents": []}}
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    store = _store_with(tmp_path, jobs, done=["a"], failed=["b"], running=["d"], driver=me)
    st = experiment_status(store, "e")
    c = st.counts
    assert (c.done, c.running, c.failed, c.blocked, c.pending, c.total) == (1, 1, 1, 1, 1, 5)
    # a train job with a done record but no rows in this experiment (its driver died between the
    # two, or another experiment did it) is not done here: `lth run` has rows to write
    jobs_f = {**jobs, "f": {"parents": [], "kind": "train"}}
    store = _store_with(tmp_path / "1", jobs_f, done=["a", "f"], failed=["b"], running=["d"], driver=me)
    assert experiment_status(store, "e").counts.done == 1
    store = _store_with(tmp_path, jobs, done=["a"], failed=["b"], running=["d"], driver=me)
    assert st.running == ["d"] and st.failed == ["b"] and st.blocked == ["c"]
    assert main(["status", "e", "--json", "--store", store.root]) == 0
    (out,) = json.loads(capsys.readouterr().out)
    assert out["blocked_jobs"] == ["c"] and out["running_jobs"] == ["d"] and out["driver"]["pid"] == os.getpid()
    # the driver is gone (its pid no longer runs here): nothing is running, whatever the heartbeat says
    dead = {"host": socket.gethostname(), "pid": 2**22 + 7}
    store = _store_with(tmp_path / "2", jobs, done=["a"], failed=["b"], running=["d"], driver=dead)
    st = experiment_status(store, "e")
    assert st.counts.running == 0 and st.driver is None and st.counts.pending == 2


def test_plan_against_a_store_tells_done_remaining_and_gpu_hours_from_measured_figures(tmp_path, capsys):
    import json

    from conftest import DEMO, tiny_args
    from orchestrator.cli import main
    from orchestrator.estimate import sweep_progress
    from orchestrator.planner import plan
    from orchestrator.spec import load_spec
    from orchestrator.store import Store

    p = plan(load_spec(DEMO, [a for a in tiny_args() if a != "--set"]))
    store = Store(str(tmp_path / "store"))
    dense = next(j for j in p.jobs.values() if j.kind == "train" and not j.parents)
    store.write_done(dense.id, {"job_id": dense.id})
    results = tmp_path / "results"
    results.mkdir()
    # no GPU figure: pending, with the command that would measure it, never a guess
    (results / "cpu.json").write_text(json.dumps({"device": "Intel Xeon", "training": [
        {"model": dense.spec.train.model, "batch_size": dense.spec.train.batch_size, "images_per_s": {"ours_masked": 100.0}}]}))
    progress = sweep_progress(p, store, str(results))
    assert (progress.done, progress.remaining) == (1, len(p.jobs) - 1)
    assert progress.gpu_hours is None and progress.source.startswith("pending: no GPU benchmark of")
    # a GPU figure: images left / images per second
    (results / "gpu.json").write_text(json.dumps({"device": "NVIDIA H100 (cuda)", "date": "d", "training": [
        {"model": dense.spec.train.model, "batch_size": dense.spec.train.batch_size, "images_per_s": {"ours_masked": 1000.0}}]}))
    progress = sweep_progress(p, store, str(results))
    images = sum((j.spec.stop_iter - j.spec.start_iter) * j.spec.train.batch_size
                 for j in p.jobs.values() if j.kind == "train" and j.id != dense.id)
    assert progress.gpu_hours == images / 1000.0 / 3600 and "gpu.json" in progress.source
    # a GPU session's folder, rows for both kernel settings: the jobs' own setting (deterministic) counts
    session = results / "h200-session"
    session.mkdir()
    row = {"model": dense.spec.train.model, "batch_size": dense.spec.train.batch_size}
    (session / "training.json").write_text(json.dumps({"device": "NVIDIA H200", "date": "e", "training": [
        {**row, "deterministic": False, "images_per_s": {"ours_masked": 4000.0}},
        {**row, "deterministic": True, "images_per_s": {"ours_masked": 2000.0}}]}))
    progress = sweep_progress(p, store, str(results))
    assert progress.gpu_hours == images / 2000.0 / 3600 and "training.json" in progress.source
    assert main(["plan", DEMO, "--json", "--store", store.root, *tiny_args()]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["store"]["done"] == 1 and out["store"]["remaining"] == len(p.jobs) - 1


def test_live_bar_renders_styles_not_markup(monkeypatch):
    from io import StringIO

    from rich.console import Console

    monkeypatch.setenv("TERM", "xterm")  # rich's Live redraws in place only on a capable terminal
    console = Console(file=StringIO(), record=True, force_terminal=True, width=100)
    progress = SweepProgress("e", live=True, console=console)
    progress.start(total=6, done=3)
    # a log line above the bar is printed with markup off, and the bar is redrawn under it with the
    # same options: a markup string in the bar came out raw exactly then
    progress.counts.done = 4
    progress.job_finished("j", "level r0 k0 L1", 1.0)
    progress.stop()
    text = console.export_text(styles=False, clear=False)
    assert "[green]" not in text and "[grey50]" not in text, text
    assert "━" * 26 + " 4/6" in text
    styled = console.export_text(styles=True)
    assert "\x1b[32m" + "━" * 26 in styled  # the done part is green, not merely stripped of its markup


def test_status_at_80_columns_keeps_names_and_headers_whole(tmp_path):
    from io import StringIO

    from rich.console import Console

    from orchestrator.progress import print_status
    from orchestrator.store import Store

    store = Store(str(tmp_path / "store"))
    names = ["demo_lr04", "demo_lr05", "cifar10_resnet20_lmc"]
    for name in names:
        store.write_experiment(name, f"name: {name}\n", {"a": {"parents": []}})
    # a driver on another host counts as live (the lock is all this host can see of it)
    store.write_json("locks/demo_lr05.lock", {"host": "gpu-node-017.example.org", "pid": 4242})
    headers = ("experiment", "done", "running", "pending", "failed", "blocked", "resumable", "total")

    def status(width: int, table: bool = True) -> list[str]:
        console = Console(file=StringIO(), width=width, force_terminal=False)  # a pipe or a CI log
        print_status(store, names, console)
        out = console.file.getvalue()
        assert "…" not in out, out
        if table:  # the one-line-per-experiment form is for logs: its lines run as long as they must
            assert max(len(line) for line in out.splitlines()) <= width, out
        return out.splitlines()

    wide = status(160)
    assert wide[0].split() == [*headers, "driver"]
    assert any(line.split()[0] == "demo_lr05" and line.endswith("pid 4242 on gpu-node-017.example.org")
               for line in wide), wide
    lines = status(80)
    assert lines[0].split() == list(headers), lines  # every header whole; the driver under the table
    for name in names:  # each name whole at the head of its row: demo_lr04 and demo_lr05 stay apart
        assert sum(line.split()[0] == name for line in lines[2:5]) == 1, (name, lines)
    assert lines[5:] == ["demo_lr05: driver pid 4242 on gpu-node-017.example.org"], lines
    # a name too long for any table at 80 columns: one whole line per experiment
    long = "cifar10_resnet20_lmc_with_a_very_long_descriptive_suffix_v2"
    store.write_experiment(long, f"name: {long}\n", {"a": {"parents": []}})
    names.append(long)
    lines = status(80, table=False)
    assert any(line.startswith(f"{long}: done 0, running 0, pending 1,") for line in lines), lines


def test_a_jobs_description_names_its_family():
    """Done, failed and status lines tell apart jobs that differ only in family: two
    pruning-at-init methods at one level, IMP and its random-pruning control."""
    from orchestrator.graph import Job, JobMeta
    from orchestrator.scheduler import _describe

    def job(role: str, strategy: str, retrain: str = "rewind") -> Job:
        meta = JobMeta(experiment="e", role=role, replicate=0, rewind_iter=0, level=1, data_seed=0,  # type: ignore[arg-type]
                       retrain=retrain, prune_strategy=strategy, density=0.5)
        return Job(id="j", kind="train", spec=None, parents=(), meta=meta)  # type: ignore[arg-type]

    assert _describe(job("level", "magnitude_global")) == "level r0 k0 L1 seed0 rewind"
    assert _describe(job("level", "random")) == "level r0 k0 L1 seed0 rewind random_prune"
    assert _describe(job("pai", "snip")) == "pai snip r0 k0 L1 seed0 rewind"
    assert _describe(job("pai", "synflow", "pai_shuffle")) == "pai synflow r0 k0 L1 seed0 pai_shuffle"
