"""What a new user meets at the command line (no Ray): plan against a store, options each
command takes, a store that is a file, output piped into a closed reader."""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import DEMO, tiny_args
from orchestrator.cli import main
from orchestrator.planner import plan
from orchestrator.spec import load_spec
from orchestrator.store import Store


def _stored(tmp_path, *sets: str) -> Store:
    """A store holding the tiny demo's experiment as `lth run` records it before any job runs."""
    spec = load_spec(DEMO, [a for a in tiny_args(*sets) if a != "--set"])
    p = plan(spec)
    store = Store(str(tmp_path / "store"))
    jobs = {j.id: {"kind": j.kind, "parents": list(j.parents)} for j in p.jobs.values()}
    store.write_experiment(spec.name, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), jobs)
    return store


def _tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_plan_refuses_a_changed_config_as_run_does(tmp_path, capsys):
    store = _stored(tmp_path)
    before = _tree(tmp_path / "store")
    args = ["--store", store.root, *tiny_args("train.optimizer.lr=0.04")]
    assert main(["plan", DEMO, *args]) == 2
    plan_err = capsys.readouterr().err
    assert "train.optimizer.lr: changed from 0.05 to 0.04" in plan_err, plan_err
    assert main(["plan", DEMO, "--json", *args]) == 2
    assert capsys.readouterr().err == plan_err
    # lth run refuses before Ray or any write: the very same message
    assert main(["run", DEMO, *args]) == 2
    assert capsys.readouterr().err == plan_err
    assert _tree(tmp_path / "store") == before


def test_plan_says_how_much_the_experiment_grows(tmp_path, capsys):
    store = _stored(tmp_path)
    stored = len(store.planned_jobs("demo"))
    grown = plan(load_spec(DEMO, [a for a in tiny_args("sweep.replicates=2") if a != "--set"]))
    added = len(grown.jobs) - stored
    assert added > 0
    args = ["--store", store.root, *tiny_args("sweep.replicates=2")]
    assert main(["plan", DEMO, *args]) == 0
    out = capsys.readouterr().out
    assert f"experiment demo: grows by {added} planned jobs" in out, out
    assert main(["plan", DEMO, "--json", *args]) == 0
    verdict = json.loads(capsys.readouterr().out)["store"]["verdict"]
    assert (verdict["status"], verdict["added_jobs"]) == ("grows", added)
    assert main(["plan", DEMO, "--store", store.root, *tiny_args()]) == 0
    assert "same config as stored" in capsys.readouterr().out


def test_plan_of_a_cpu_sweep_says_nothing_of_gpu_hours(tmp_path, capsys):
    store = _stored(tmp_path)
    assert load_spec(DEMO).resources.gpus == 0
    assert main(["plan", DEMO, "--store", store.root, *tiny_args()]) == 0
    out = capsys.readouterr().out
    assert "jobs done" in out and "GPU" not in out, out
    assert main(["plan", DEMO, "--json", "--store", store.root, *tiny_args()]) == 0
    assert json.loads(capsys.readouterr().out)["store"]["gpu_hours_left"] is None


def test_plan_show_config_json_prints_json(capsys):
    assert main(["plan", DEMO, "--show-config", "--json", "--set", "train.optimizer.lr=0.04"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["name"] == "demo" and resolved["train"]["optimizer"]["lr"] == 0.04
    assert main(["plan", DEMO, "--show-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["optimizer"]["lr"] == 0.05


@pytest.mark.parametrize("command", [["plan", DEMO], ["status"], ["logs", "abc"], ["analyze", "demo"]])
def test_a_store_that_is_a_file_is_refused(tmp_path, capsys, command):
    path = tmp_path / "notes.md"
    path.write_text("# not a store\n")
    assert main([*command, "--store", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: --store: {str(path)!r} is a file, not a directory" in err, err
    assert path.read_text() == "# not a store\n"


@pytest.mark.parametrize("command, option", [
    (["status"], ["--set", "train.optimizer.lr=0.04"]),
    (["status"], ["--address", "auto"]),
    (["analyze", "demo"], ["--set", "sweep.replicates=4"]),
    (["analyze", "demo"], ["--address", "auto"]),
    (["logs", "abc"], ["--set", "name=x"]),
    (["logs", "abc"], ["--address", "auto"]),
    (["plan", DEMO], ["--address", "auto"]),  # plan starts no Ray: an address would be ignored
    (["schema"], ["--store", "s"]),
])
def test_options_a_command_does_not_use_are_rejected(tmp_path, capsys, command, option):
    with pytest.raises(SystemExit) as e:
        main([*command, *option])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"unrecognized arguments: {option[0]}" in err, err


def test_options_a_command_uses_are_accepted(tmp_path, capsys):
    store = _stored(tmp_path)
    assert main(["status", "--store", store.root]) == 0
    assert main(["plan", DEMO, "--store", store.root, *tiny_args()]) == 0
    assert main(["logs", "zzz", "--store", store.root]) == 2  # parsed; no such job
    assert "no job in store" in capsys.readouterr().err


def _with_reader_gone(*args: str):
    """`lth ARGS | head -c 0`: the reader has left before the first line is written."""
    import subprocess
    import sys

    from conftest import REPO, lth_env

    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], cwd=REPO, env=lth_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    return proc.wait(timeout=120), err


def test_analyze_into_a_closed_pipe_still_writes_its_report(tmp_path):
    store = _stored(tmp_path)
    rc, err = _with_reader_gone("analyze", "demo", "--store", store.root)
    assert (rc, err) == (0, "")  # quiet, and 0: the report was written (see cli.main)
    assert (tmp_path / "store" / "reports" / "demo" / "report.html").is_file()
    rc, err = _with_reader_gone("status", "--store", store.root)
    assert (rc, err) == (0, "")


def test_store_precedence_flag_then_environment_then_config(tmp_path, monkeypatch):
    """--store, then $LTH_STORE (the deployment's: cluster images set it to a shared bucket),
    then the config's store:, then ./lth-store."""
    import argparse

    from orchestrator.cli import _store_root

    flag, env, conf = str(tmp_path / "flag"), str(tmp_path / "env"), str(tmp_path / "conf")
    monkeypatch.setenv("LTH_STORE", env)
    assert _store_root(argparse.Namespace(store=flag), conf) == flag
    assert _store_root(argparse.Namespace(store=None), conf) == env
    monkeypatch.delenv("LTH_STORE")
    assert _store_root(argparse.Namespace(store=None), conf) == conf
    assert _store_root(argparse.Namespace(store=None), None) == "lth-store"


def test_analyze_errors_go_to_stderr(tmp_path, capsys):
    """What went wrong goes to stderr, so `lth analyze NAME > summary.txt` keeps it on screen."""
    (tmp_path / "results").mkdir()
    for argv in (["analyze", "demo"], ["analyze", "demo", "other"]):
        assert main([*argv, "--store", str(tmp_path)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("error:") and "empty" in err, (out, err)
