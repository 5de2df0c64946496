"""Small things a new user trips on (issue 21, item 5): --version, `--set KEY VALUE`, 'did you
mean', `lth status --watch` and `lth rm`. No Ray."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import DEMO
from orchestrator.cli import main
from orchestrator.store import Store


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    from importlib.metadata import version

    assert capsys.readouterr().out.strip() == f"lth {version('lth-sweep')}"


def test_set_with_a_space_points_at_key_equals_value(capsys):
    assert main(["plan", DEMO, "--set", "train.optimizer.lr", "0.05"]) == 2
    assert "--set train.optimizer.lr 0.05: the value goes after '=': --set train.optimizer.lr=0.05" in \
        capsys.readouterr().err


def test_did_you_mean_for_a_field_and_an_experiment(tmp_path, capsys):
    assert main(["plan", DEMO, "--set", "train.optimizer.lrr=0.1"]) == 2
    assert "unknown key 'lrr' at train.optimizer (did you mean 'lr'?)" in capsys.readouterr().err
    store = Store(str(tmp_path / "store"))
    store.write_experiment("demo_lr05", "name: demo_lr05\n", {})
    assert main(["status", "demo-lr05", "--store", store.root]) == 2
    assert "no experiment 'demo-lr05'" in (err := capsys.readouterr().err) and "(did you mean 'demo_lr05'?)" in err
    assert main(["rm", "demo_lr5", "--store", store.root, "--yes"]) == 2
    assert "(did you mean 'demo_lr05'?)" in capsys.readouterr().err


def test_status_watch_redraws_until_ctrl_c(tmp_path, capsys, monkeypatch):
    import time

    store = Store(str(tmp_path / "store"))
    store.write_experiment("e", "name: e\n", {"a": {"parents": []}})
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", sleep)
    assert main(["status", "--watch", "0.5", "--store", store.root]) == 0  # Ctrl-C ends a watch: exit 0
    out = capsys.readouterr().out
    assert sleeps == [0.5, 0.5] and out.count("every 0.5s, Ctrl-C to stop") == 2 and out.count("pending") == 2
    assert main(["status", "--watch", "--json", "--store", store.root]) == 2


def _two_experiments_sharing_a_job(tmp_path) -> Store:
    store = Store(str(tmp_path / "store"))
    store.write_experiment("a", "name: a\n", {"shared": {"parents": []}, "own": {"parents": ["shared"]}})
    store.write_experiment("b", "name: b\n", {"shared": {"parents": []}, "b_own": {"parents": ["shared"]}})
    for job in ("shared", "own", "b_own"):
        store.write_done(job, {"job_id": job})
    for exp, job in (("a", "shared"), ("a", "own"), ("b", "shared")):
        store.stage_rows("metrics", exp, [{"job_id": job, "iteration": 0, "split": "test", "loss": 1.0,
                                           "accuracy": 0.5, "config_hash": "h"}], key=job)
    store.write_bytes("reports/a/report.html", b"<html/>")
    return store


def test_rm_deletes_an_experiments_own_files_and_keeps_what_another_plans(tmp_path, capsys):
    store = _two_experiments_sharing_a_job(tmp_path)
    root = tmp_path / "store"
    assert main(["rm", "a", "--store", store.root, "--yes"]) == 0
    out = capsys.readouterr().out
    assert "artifacts of 1 jobs only this experiment plans" in out and "other experiments plan too (b)" in out
    assert store.experiments() == ["b"]
    assert sorted(p.name for p in (root / "artifacts").iterdir()) == ["b_own", "shared"]  # "own" is gone
    assert not (root / "reports" / "a").exists() and not (root / "staging" / "metrics" / "experiment=a").exists()
    assert (root / "staging" / "metrics" / "experiment=b").exists()
    assert store.staged_keys("metrics", "b") == {"shared"}


def test_rm_refuses_while_a_driver_holds_the_lock_and_asks_first(tmp_path, capsys):
    from orchestrator.lock import ExperimentLock

    store = _two_experiments_sharing_a_job(tmp_path)
    with ExperimentLock(store, "a"):  # a live driver (this process) runs experiment a
        assert main(["rm", "a", "--store", store.root, "--yes"]) == 1
    assert "error: refusing to delete: experiment 'a' is being run by pid" in capsys.readouterr().err
    assert store.experiments() == ["a", "b"]
    assert main(["rm", "a", "--store", store.root]) == 2  # no terminal to ask on: only with --yes
    assert "would delete" in capsys.readouterr().out and store.experiments() == ["a", "b"]


def test_readme_first_commands_work_in_a_fresh_shell_and_the_download_size_is_the_locks():
    """Issue 21, item 6: the README says to activate .venv before the first bare `lth`, and the
    download it states is what uv.lock records (so the figure stays true when the lock moves)."""
    import re
    import sys

    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    first_lth = re.search(r"^(?:\$ )?lth \w", readme, re.M)
    assert first_lth is not None
    before = readme[:first_lth.start()]
    assert ". .venv/bin/activate" in before and ".venv/bin/lth" in before
    if sys.version_info < (3, 11):
        pytest.skip("tomllib")
    import tomllib

    lock = tomllib.loads((REPO / "uv.lock").read_text())
    # the wheel each locked package installs on the README's reference platform (CPython 3.11, Linux x86_64)
    total = 0
    for package in lock["package"]:
        for wheel in package.get("wheels", []):
            name = wheel["url"].rsplit("/", 1)[-1]
            if re.search(r"-(cp311-cp311|cp3\d+-abi3|py3-none|py2\.py3-none)-(manylinux\S*x86_64|any)\.whl$", name):
                total += wheel.get("size", 0)
                break
    stated = re.search(r"about ([\d.]+) GB of wheels", readme)
    assert stated is not None and float(stated.group(1)) == round(total / 1e9, 1), (stated, total)


def test_misspelt_command_config_and_key_get_a_suggestion_and_analyse_works(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["stauts"])
    assert e.value.code == 2 and "(did you mean 'status'?)" in capsys.readouterr().err
    store = Store(str(tmp_path / "store"))
    store.write_experiment("demo", "name: demo\n", {})
    assert main(["analyse", "nothere", "--store", store.root]) == 2  # the command runs (and names the experiment)
    assert "unknown experiment 'nothere'" in capsys.readouterr().err
    assert main(["plan", DEMO[: -len(".yaml")] + ".yml"]) == 2
    assert f"no such config file (did you mean {DEMO!r}?)" in capsys.readouterr().err
    assert main(["plan", DEMO, "--set", "train.lr=0.1"]) == 2
    assert "unknown key 'lr' at train (did you mean 'train.optimizer.lr'?)" in capsys.readouterr().err


def test_an_unreachable_object_store_is_one_line_and_exit_2(capsys, monkeypatch):
    """s3:// on a loopback port where nothing listens (the client retries for a few seconds):
    one line naming the store and why, exit 2, no traceback."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "none")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "none")
    url = "s3://bucket/lth?endpoint_override=127.0.0.1:9&scheme=http"
    assert main(["status", "--store", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --store: cannot open {url!r}: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_status_names_running_jobs_as_lth_run_does(tmp_path, capsys):
    """A running job's line carries its description (the one `lth run`'s live view shows), not
    its id alone."""
    from orchestrator.lock import ExperimentLock

    store = Store(str(tmp_path / "store"))
    job = "a" * 20
    store.write_experiment("e", "name: e\n", {job: {"parents": [], "kind": "train",
                                                    "what": "level r0 k0 L1 seed0 rewind"}})
    store.write_json(Store.artifact(job, "progress.json"),
                     {"iteration": 20, "start_iter": 0, "stop_iter": 40, "rate": 5.0, "time": 1.0})
    with ExperimentLock(store, "e", interrupt_on_loss=False):
        store.write_heartbeat("e", [job])
        assert main(["status", "e", "--store", store.root]) == 0
    assert f"e: running  {job[:12]} level r0 k0 L1 seed0 rewind iteration 20/40, 5 it/s" in capsys.readouterr().out


def test_early_bird_retrains_of_different_fractions_have_different_names():
    from orchestrator.planner import plan
    from orchestrator.scheduler import _describe
    from orchestrator.spec import load_spec

    jobs = plan(load_spec(str(Path(DEMO).parent / "demo_structured.yaml"), [])).jobs.values()
    retrains = [_describe(j) for j in jobs if j.meta is not None and j.meta.role == "early_bird"
                and j.meta.retrain != "eb_search"]
    assert len(retrains) > 2 and len(set(retrains)) == len(retrains), retrains
    assert any(d.startswith("early_bird p0.3 ") for d in retrains) and any(d.startswith("early_bird p0.5 ") for d in retrains)


def test_plan_labels_its_density_column_channel_or_weight(capsys):
    structured = str(Path(DEMO).parent / "demo_structured.yaml")
    assert main(["plan", structured]) == 0
    assert "channel density" in capsys.readouterr().out
    assert main(["plan", DEMO]) == 0
    out = capsys.readouterr().out
    assert "weight density" in out and "channel density" not in out


def test_analysis_without_branches_does_not_promise_instability_yet(tmp_path):
    """A plan without interpolation pairs never measures instability: no "yet"; one with pairs
    not measured so far still says "yet"."""
    import io

    from rich.console import Console

    from orchestrator.analysis.present import print_key_tables
    from orchestrator.analysis.read import Store as AnalysisStore, read_progress

    store = Store(str(tmp_path / "store"))
    out = {}
    for name, jobs in (("flat", {"t": {"kind": "train"}}), ("branched", {"t": {"kind": "train"}, "i": {"kind": "interpolate"}})):
        store.write_experiment(name, f"name: {name}\n", jobs)
        console = Console(file=io.StringIO(), width=200)
        progress = read_progress(AnalysisStore.open(store.root), name, 0, 0)
        print_key_tables(console, [], None, branches_planned=progress.branches_planned())
        out[name] = console.file.getvalue()
    assert "yet" not in out["flat"] and "plans no branches" in out["flat"]
    assert "No instability measurements yet." in out["branched"]


def test_rm_removes_the_experiments_local_wandb_runs_and_says_so(tmp_path, capsys, monkeypatch):
    """A real offline W&B run of the experiment (W&B names its directory) and runs named as lth
    names its job and analysis runs: the experiment's own go, those of a job another experiment
    plans and of another experiment stay."""
    import os

    import wandb

    monkeypatch.delenv("LTH_WANDB_DIR", raising=False)
    store = _two_experiments_sharing_a_job(tmp_path)
    root = tmp_path / "store"
    run = wandb.init(mode="offline", dir=str(root), project="p", id="experiment-a-0123abcd", reinit="create_new",
                     settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))
    run.finish()
    made = {p.name for p in (root / "wandb").iterdir() if p.name.startswith("offline-run-")}
    assert len(made) == 1
    for run_id in ("own-89abcdef", "analysis-a-00000000", "shared-11111111", "experiment-b-22222222",
                   "experiment-a-b-33333333"):  # (a name that only starts like a's experiment run)
        (root / "wandb" / f"offline-run-20261207_010203-{run_id}").mkdir()
    assert main(["rm", "a", "--store", store.root, "--yes"]) == 0
    out = capsys.readouterr().out
    assert f"3 local W&B runs in {root / 'wandb'}" in out and "`wandb sync` does not upload them" in out
    left = sorted(p.name.split("-", 3)[-1] for p in (root / "wandb").iterdir() if p.name.startswith("offline-run-"))
    assert left == ["experiment-a-b-33333333", "experiment-b-22222222", "shared-11111111"]
    assert not os.path.lexists(root / "wandb" / "latest-run") or os.path.exists(root / "wandb" / "latest-run")
