"""`lth` end to end on the tiny demo sweep: results, idempotence, growth, W&B, bad input."""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

import wandb_records
from conftest import DEMO, lth_env, run_lth, tiny_args, tree_digest
from orchestrator.cli import main
from orchestrator.experiment import config_hash
from orchestrator.planner import plan
from orchestrator.schemas import TABLES
from orchestrator.spec import load_spec
from orchestrator.store import Store

def _plan(*extra: str):
    sets = [a for a in tiny_args(*extra) if a != "--set"]
    return plan(load_spec(DEMO, sets))


def _done_mtimes(store: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (store / "artifacts").glob("*/done.json")}


def _ran(out: str) -> int:
    m = re.search(r"ran (\d+) jobs", out)
    assert m, out
    return int(m.group(1))


@pytest.fixture(scope="module")
def swept(ray_session, tmp_path_factory):
    """The tiny demo sweep, run once for the module."""
    store = tmp_path_factory.mktemp("run") / "store"
    rc = main(["run", DEMO, "--store", str(store), *tiny_args()])
    return store, rc


def test_sweep_end_to_end(swept):
    store_dir, rc = swept
    assert rc == 0
    p = _plan()
    store = Store(str(store_dir))
    # every planned job is done
    assert set(p.jobs) <= set(_done_mtimes(store_dir))
    # the four tables, exactly the documented columns
    tables = {name: store.read_table(name, "demo") for name in TABLES}
    spec_hash = config_hash(load_spec(DEMO, [a for a in tiny_args() if a != "--set"]))
    for name, table in tables.items():
        assert table.schema.names == TABLES[name].names, name
        if name == "early_bird":  # the demo has no early-bird search (tests/test_structured_run.py has)
            assert table.num_rows == 0
            continue
        assert table.num_rows > 0, name
        assert set(table.column("config_hash").to_pylist()) == {spec_hash}, name
    assert (store_dir / "experiments/demo/configs" / f"{spec_hash}.yaml").is_file()
    train = {j.id: j for j in p.jobs.values() if j.kind == "train"}
    pairs = {j.id: j for j in p.jobs.values() if j.kind == "interpolate"}
    runs = tables["runs"].to_pylist()
    assert sorted(r["job_id"] for r in runs) == sorted(train)  # one row per train job
    for r in runs:  # densities as planned, level by level (pruning is exact)
        assert r["density"] == pytest.approx(train[r["job_id"]].meta.density, abs=1e-12)
        assert r["level"] == train[r["job_id"]].meta.level
        assert r["attempts"] == 1 and r["node"] and r["host"]
        assert r["deterministic"] is True  # train.deterministic defaults to true (and a CPU always is)
        assert (store_dir / r["weights_path"]).is_file() and (store_dir / r["mask_path"]).is_file()
    by_level = {r["level"]: r["density"] for r in runs}
    assert by_level == pytest.approx({0: 1.0, 1: 0.5, 2: 0.25})
    # evaluations at iterations start, 20 and 40, for both splits, for every train job
    metrics = Counter(tables["metrics"].column("job_id").to_pylist())
    assert set(metrics) == set(train) and min(metrics.values()) >= 4
    # one instability row per pair and split, and num_alphas interpolation points each
    inst = tables["instability"].to_pylist()
    assert Counter((r["pair_id"], r["split"]) for r in inst) == {(pid, s): 1 for pid in pairs for s in ("test", "train")}
    for r in inst:
        assert {r["job_a"], r["job_b"]} == set(pairs[r["pair_id"]].meta.pair)
        assert r["barrier"] == pytest.approx(r["max_error"] - (r["error_a"] + r["error_b"]) / 2)
    interp = tables["interpolation"]
    assert interp.num_rows == len(pairs) * 2 * 3
    assert sorted(set(interp.column("alpha").to_pylist())) == [0.0, 0.5, 1.0]
    # the experiment's plan is in the store, so `lth status` needs nothing else
    assert set(json.loads((store_dir / "experiments/demo/jobs.json").read_text())) == set(p.jobs)
    # files honour the umask (Ray workers inherit it): colleagues on a shared store can read them
    umask = os.umask(0)
    os.umask(umask)
    modes = {f.relative_to(store_dir).as_posix(): f.stat().st_mode & 0o777
             for f in store_dir.rglob("*") if f.is_file() and f.parts[-2] != "locks"}
    assert modes and {m for m in modes.values()} == {0o666 & ~umask}, modes


def test_a_worker_with_short_jobs_has_its_next_job_queued_behind_the_running_one(swept):
    """Short calls (the tiny demo's jobs take well under PREFETCH_BELOW_SECONDS) get the worker's
    next job queued behind the one it runs, so it never waits for the driver to record a job and
    hand it the next. Without that, a job starts only after the driver wrote the done record of
    the worker's previous job (its dispatch comes after that write); with it, some job on a
    worker started before that record was written."""
    store, rc = swept
    assert rc == 0
    by_worker: dict[int, list[dict]] = {}
    for path in (store / "artifacts").glob("*/done.json"):
        record = json.loads(path.read_text())
        by_worker.setdefault(record["pid"], []).append({**record, "written": path.stat().st_mtime})
    overlapped = 0
    for records in by_worker.values():
        records.sort(key=lambda r: r["started"])
        overlapped += sum(b["started"] < a["written"] for a, b in zip(records, records[1:]))
    assert overlapped >= 1, {pid: len(rs) for pid, rs in by_worker.items()}


def test_recent_calls_allow_queueing_only_after_a_full_window_of_short_calls():
    from orchestrator.scheduler import RecentCalls

    recent = RecentCalls(window=3, below=2.0)
    for seconds in (0.1, 0.2):
        recent.add(seconds)
        assert not recent.all_short()  # not enough seen yet
    recent.add(0.3)
    assert recent.all_short()
    recent.add(2.0)  # one long call (a job of another kind, a bigger level) stops it ...
    assert not recent.all_short()
    for seconds in (0.1, 0.1):
        recent.add(seconds)
        assert not recent.all_short()
    recent.add(0.1)  # ... until it left the window
    assert recent.all_short()


def test_status_counts_from_the_store(swept, capsys):
    store_dir, _ = swept
    assert main(["status", "--store", str(store_dir)]) == 0
    out = capsys.readouterr().out
    n = len(_plan().jobs)
    row = next(line for line in out.splitlines() if line.strip().startswith("demo"))
    assert row.replace("│", " ").split()[1:9] == [str(n), "0", "0", "0", "0", "0", str(n), "-"]  # done .. total, no driver
    assert main(["status", "nope", "--store", str(store_dir)]) == 2
    assert main(["status", "demo", "--json", "--store", str(store_dir)]) == 0
    (status,) = json.loads(capsys.readouterr().out)
    assert status["experiment"] == "demo" and status["done"] == status["total"] == n and status["driver"] is None


def test_analyze_reads_the_sweep(swept, tmp_path, capsys):
    store_dir, _ = swept
    out = tmp_path / "report"
    assert main(["analyze", "demo", "--store", str(store_dir), "--out", str(out)]) == 0
    assert (out / "report.html").is_file()
    assert main(["analyze", "nope", "--store", str(store_dir)]) == 2


def test_rerun_runs_nothing_and_growth_runs_only_new_jobs(swept, capsys):
    store_dir, _ = swept
    before = _done_mtimes(store_dir)
    capsys.readouterr()
    assert main(["run", DEMO, "--store", str(store_dir), *tiny_args()]) == 0
    assert _ran(capsys.readouterr().out) == 0
    assert _done_mtimes(store_dir) == before

    grown = _plan("pruning.levels=3")
    new = set(grown.jobs) - set(_plan().jobs)
    assert new and all(grown.jobs[j].meta.level == 3 for j in new)
    assert main(["run", DEMO, "--store", str(store_dir), *tiny_args("pruning.levels=3")]) == 0
    assert _ran(capsys.readouterr().out) == len(new)
    after = _done_mtimes(store_dir)
    assert {j: after[j] for j in before} == before  # nothing done was redone
    assert set(after) == set(before) | new
    runs = Store(str(store_dir)).read_table("runs", "demo")
    assert runs.num_rows == sum(1 for j in grown.jobs.values() if j.kind == "train")  # no duplicates

    # a new rewinding point: the done dense run lacks w_20.pt (save_iters is not in its id), so
    # it runs again, giving bitwise the same weights plus W_20; then the new lineage runs
    more = ("pruning.levels=3", "sweep.rewind_iters=[0, 10, 20]")
    wider = _plan(*more)
    dense = next(j for j in wider.jobs.values() if j.kind == "train" and not j.parents)
    weights_before = tree_digest(store_dir, [dense.id])
    assert dense.id in after and not (store_dir / "artifacts" / dense.id / "w_20.pt").exists()
    assert main(["run", DEMO, "--store", str(store_dir), *tiny_args(*more)]) == 0
    out = capsys.readouterr().out
    assert _ran(out) == len(set(wider.jobs) - set(grown.jobs)) + 1 and f"rerun  {dense.id}" in out
    final = _done_mtimes(store_dir)
    assert {j: final[j] for j in after if j != dense.id} == {j: after[j] for j in after if j != dense.id}
    digest = tree_digest(store_dir, [dense.id])
    assert {k: v for k, v in digest.items() if not k.endswith("w_20.pt")} == weights_before
    assert f"{dense.id}/w_20.pt" in digest
    runs = Store(str(store_dir)).read_table("runs", "demo")
    assert runs.num_rows == sum(1 for j in wider.jobs.values() if j.kind == "train")
    # the documented raw read: each job's row once; the rerun dense run's row was not written
    # again (it keeps the config_hash of the config it was first written under)
    raw = ds.dataset(str(store_dir / "results" / "runs"), partitioning="hive").to_table().to_pylist()
    assert sorted(r["job_id"] for r in raw) == sorted(j.id for j in wider.jobs.values() if j.kind == "train")
    first = config_hash(load_spec(DEMO, [a for a in tiny_args() if a != "--set"]))
    assert next(r for r in raw if r["job_id"] == dense.id)["config_hash"] == first
    assert {r["config_hash"] for r in raw} == {first, grown.jobs[next(iter(new))].meta.config_hash,
                                               wider.jobs[dense.id].meta.config_hash}


def test_other_experiment_reuses_done_jobs(swept, capsys):
    """Equal work has an equal id: a second experiment on the same store runs nothing, yet gets
    its own rows (written from the done records)."""
    store_dir, _ = swept
    capsys.readouterr()
    assert main(["run", DEMO, "--store", str(store_dir), *tiny_args("name=demo_copy")]) == 0
    assert _ran(capsys.readouterr().out) == 0
    store = Store(str(store_dir))
    for table, key in (("runs", "job_id"), ("instability", "pair_id")):
        # wall_seconds: demo's dense run was finished again when demo grew a rewinding point; its
        # done record (which demo_copy's rows come from) has the rerun's time, its demo row the first
        drop = ["experiment", "wall_seconds"] if table == "runs" else ["experiment"]
        mine = store.read_table(table, "demo_copy").drop_columns(drop)
        theirs = store.read_table(table, "demo").drop_columns(drop)
        theirs = theirs.filter(pc.is_in(theirs.column(key), mine.column(key)))
        order = [(key, "ascending"), ("split" if table == "instability" else "level", "ascending")]
        assert mine.num_rows == len(_plan().jobs) - 4 if table == "runs" else mine.num_rows == 4 * 2
        assert mine.sort_by(order).equals(theirs.sort_by(order))


def test_rerun_with_nothing_left_answers_without_ray(swept, tmp_path):
    """A rerun of a finished sweep (a second `make demo`) starts no Ray: it answers in seconds."""
    store_dir, _ = swept
    ray_parent = tmp_path / "ray"
    ray_parent.mkdir()
    # the config as stored (other tests of this module grow the experiment)
    stored = str(store_dir / "experiments" / "demo" / "spec.yaml")
    proc = run_lth("run", stored, "--store", str(store_dir), env=lth_env(LTH_RAY_TMPDIR=str(ray_parent)))
    assert proc.returncode == 0, proc.stderr
    assert _ran(proc.stdout) == 0
    assert list(ray_parent.iterdir()) == []  # no Ray session was ever made


def test_workers_leave_no_temporary_files_behind(tmp_path):
    """W&B makes a socket directory and media/artifact directories in $TMPDIR in every worker
    process; a worker that is stopped rather than exited never removes them (hundreds piled up
    in /tmp). The embedded Ray gives its workers a TMPDIR inside its session directory, which
    goes at the end of the run."""
    import shutil
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="lthw-", dir="/tmp"))  # Ray's socket paths must stay under 107 bytes
    tmp, ray_parent = short / "tmp", short / "ray"
    tmp.mkdir()
    ray_parent.mkdir()
    args = tiny_args("pruning.levels=0", "sweep.rewind_iters=[0]", "sweep.branch.seeds=[]", "sweep.branch.levels=[0]",
                     "tracking.wandb=offline")
    proc = run_lth("run", DEMO, "--store", str(tmp_path / "store"), *args,
                   env=lth_env(TMPDIR=str(tmp), LTH_RAY_TMPDIR=str(ray_parent)))
    assert proc.returncode == 0, proc.stderr
    assert _ran(proc.stdout) == 1
    assert list((tmp_path / "store" / "wandb").glob("offline-run-*")), "W&B did run"
    try:
        assert sorted(p.name for p in tmp.iterdir()) == []
        assert list(ray_parent.iterdir()) == []
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_unreachable_address_fails_at_once_writing_nothing(tmp_path):
    """Nothing listens there: one line, exit 2, no store (ray.init alone would retry for minutes,
    past the subprocess timeout)."""
    store = tmp_path / "store"
    proc = run_lth("run", DEMO, "--store", str(store), "--address", "127.0.0.1:1", *tiny_args(), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --address: no Ray cluster answers at 127.0.0.1:1 "
                                                "(Connection refused)"]
    assert not store.exists()


@pytest.mark.parametrize("server", ["http", "silent", "grpc"])
def test_an_address_that_is_not_ray_fails_at_once_writing_nothing(tmp_path, server):
    """Something listens but is not Ray: an HTTP/1 server (the dashboard's port is the usual
    mistake), one that accepts and says nothing, or a gRPC server of another service (it passes
    an HTTP/2 greeting). ray.init would retry for minutes on each."""
    import http.server
    import socket
    import threading

    if server == "grpc":
        from concurrent import futures

        import grpc

        srv = grpc.server(futures.ThreadPoolExecutor(max_workers=1))  # serves no method at all
        port = srv.add_insecure_port("127.0.0.1:0")
        srv.start()
        stop = lambda: srv.stop(None)  # noqa: E731
    elif server == "http":
        srv = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
        port = srv.server_address[1]
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        stop = srv.shutdown
    else:
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(4)  # the kernel completes the handshake; nobody ever reads or writes
        port = lsock.getsockname()[1]
        stop = lsock.close
    store = tmp_path / "store"
    try:
        proc = run_lth("run", DEMO, "--store", str(store), "--address", f"127.0.0.1:{port}", *tiny_args(), timeout=60)
    finally:
        stop()
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"error: --address: 127.0.0.1:{port} accepts connections but is not a Ray cluster")
    assert not store.exists()


# ---- W&B offline -------------------------------------------------------------------------


def _wandb_records(path: Path):
    """The records of an offline run's .wandb file (W&B's LevelDB-style log of protobufs)."""
    return wandb_records.records(path)


def test_wandb_offline_runs(swept):
    store_dir, _ = swept
    p = _plan()
    runs = {}
    for f in (store_dir / "wandb").glob("offline-run-*/*.wandb"):
        history: dict[int, dict] = {}
        for rec in _wandb_records(f):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                run = rec.run
                config = {u.key: json.loads(u.value_json) for u in run.config.update}
                info = {"group": run.run_group, "job_type": run.job_type, "name": run.display_name, "config": config}
            elif kind == "history":
                items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item}
                history.setdefault(items["_step"], {}).update(items)
        info["history"] = history
        info["metrics"] = wandb_records.metrics(_wandb_records(f))
        info["summary"] = wandb_records.summary(_wandb_records(f))
        if info["job_type"] == "experiment":  # the group's experiment run (test below)
            continue
        key = info["config"]["job_id"]
        # a job run again (the dense run that added w_20.pt) has a second, metric-less W&B run
        if key not in runs or len(history) > len(runs[key]["history"]):
            runs[key] = info
    # one W&B run per job (the growth test added level-3 jobs: their runs too)
    assert set(p.jobs) <= set(runs) and len(runs) == len(list((store_dir / "artifacts").glob("*/done.json")))
    for job_id, job in p.jobs.items():
        run = runs[job_id]
        m = job.meta
        if job.kind == "train":  # a name a person can read, e.g. r0-k10-L1-s0-<id>
            assert run["name"].endswith(f"r{m.replicate}-k{m.rewind_iter}-L{m.level}-s{m.data_seed}-{job_id[:8]}"), run["name"]
        else:  # the path along alpha, drawn by W&B: one step per alpha
            assert run["name"] == f"interp-r{m.replicate}-k{m.rewind_iter}-L{m.level}-{job_id[:8]}"
            assert [run["history"][i]["alpha"] for i in sorted(run["history"])] == [0.0, 0.5, 1.0]
            assert all(0 <= h["test/error"] <= 1 for h in run["history"].values())
            # drawn against alpha, not the step index; the barrier in percentage points
            assert run["metrics"]["test/error"] == run["metrics"]["train/loss"] == "alpha"
            inst = Store(str(store_dir)).read_table("instability", "demo").to_pylist()
            barrier = next(r["barrier"] for r in inst if r["pair_id"] == job_id and r["split"] == "test")
            assert run["summary"]["test/barrier_pp"] == pytest.approx(100 * barrier, abs=1e-9)
        assert run["group"] == "demo"
        assert run["job_type"] == job.meta.role
        c = run["config"]
        assert (c["job_id"], c["replicate"], c["rewind_iter"], c["level"]) == (
            job_id, job.meta.replicate, job.meta.rewind_iter, job.meta.level,
        )
        assert c["density"] == pytest.approx(job.meta.density) and c["data_seed"] == job.meta.data_seed
        if job.kind == "train":
            assert c["job"]["train"]["iterations"] == 40
            assert 40 in run["history"] and "test/accuracy" in run["history"][40]
            assert 0 <= run["history"][40]["test/accuracy"] <= 1


def _experiment_runs(store_dir: Path, group: str) -> list[Path]:
    out = []
    for f in sorted((store_dir / "wandb").glob("offline-run-*/*.wandb")):
        # the experiment run is written by the driver, in this process, and may not be written
        # out yet (wandb_records.finished_records); the job runs' workers finished them long before
        recs = wandb_records.records(f)
        if not any(r.WhichOneof("record_type") == "run" for r in recs):
            recs = wandb_records.finished_records(f)
        run = wandb_records.run_record(recs)
        if run.run_group == group and run.job_type == "experiment":
            out.append(f)
    return out


def test_a_fork_that_reuses_every_job_has_them_all_in_its_wandb_group(swept, capsys):
    """A fork that runs nothing (every job reused) still gets a complete W&B group: one
    `experiment` run whose `jobs` table lists every planned job with its results; a rerun with
    nothing new logs no second one (issue 21, item 7)."""
    store_dir, _ = swept
    args = ["run", DEMO, "--store", str(store_dir), *tiny_args("name=demo_wandb_fork")]
    assert main(args) == 0
    assert _ran(capsys.readouterr().out) == 0
    (f,) = _experiment_runs(store_dir, "demo_wandb_fork")
    record = wandb_records.run_record(wandb_records.finished_records(f))
    # unique in the project (one per set of done jobs), and carrying the experiment's hyperparameters
    assert re.fullmatch(r"experiment-demo_wandb_fork-(\d+)of\1-[0-9a-f]{8}", record.display_name), record.display_name
    config = {u.key: json.loads(u.value_json) for u in record.config.update}
    assert config["train"]["iterations"] == 40 and config["train"]["optimizer"]["lr"] == 0.05
    assert config["model"] and config["pruning"]["levels"] and "resources" not in config and "name" not in config
    (table_file,) = (f.parent / "files" / "media" / "table").glob("jobs_*.table.json")
    table = json.loads(table_file.read_text())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    p = _plan("name=demo_wandb_fork")
    assert {r["job_id"] for r in rows} == set(p.jobs) and len(rows) == len(p.jobs)
    assert all(r["done"] and not r["ran_by_this_lth_run"] for r in rows)
    store = Store(str(store_dir))
    acc = {r["job_id"]: r["test_accuracy"] for r in store.read_table("runs", "demo_wandb_fork").to_pylist()}
    for r in rows:
        if r["kind"] == "train":
            assert r["test_accuracy_pct"] == pytest.approx(100 * acc[r["job_id"]])
        else:
            assert r["test_barrier_pp"] is not None
    assert main(args) == 0  # nothing new: no second experiment run
    assert len(_experiment_runs(store_dir, "demo_wandb_fork")) == 1


# ---- the remote-store code path (copy through a local scratch directory) ------------------


def test_remote_store_stand_in(swept, tmp_path, capsys):
    store_dir, _ = swept
    remote = tmp_path / "remote"
    assert main(["run", DEMO, "--store", remote.as_uri(), *tiny_args()]) == 0
    p = _plan()
    assert set(p.jobs) <= set(_done_mtimes(remote))
    trains = [j for j in p.jobs if p.jobs[j].kind == "train"]
    digest = tree_digest(remote, trains)
    local = tree_digest(store_dir, trains)  # (the growth test added w_20.pt to the dense run)
    assert len(digest) == 2 * len(trains) + 2 and digest == {k: local[k] for k in digest}  # bitwise
    assert not list(remote.glob("artifacts/*/checkpoint.pt"))  # finished jobs leave no checkpoint
    cols = ["job_id", "density", "test_loss", "test_accuracy", "train_loss", "weights_path"]
    a = Store(remote.as_uri()).read_table("runs", "demo").select(cols).sort_by("job_id")
    local = Store(str(store_dir)).read_table("runs", "demo").select(cols).sort_by("job_id")
    local = local.filter(pc.is_in(local.column("job_id"), a.column("job_id")))
    assert a.equals(local)


# ---- bad input: exit 2, the field named, nothing written ------------------------------------


@pytest.mark.parametrize(
    "sets, field",
    [
        (["train.bogus=1"], "bogus"),
        (["pruning.fraction=1.5"], "pruning.fraction"),
        (["sweep.rewind_iters=[0, 400]"], "sweep.rewind_iters[1]"),
        (["data.name=cifar10", "data.root=/nonexistent/cifar"], "data"),
        (["model=resnet9000"], "model"),
        (["resources.gpus=64"], "resources.gpus"),  # a local Ray can never fit the job
        (["resources.cpus=100000"], "resources.cpus"),
        (["pruning.levels=18"], "pruning.levels"),  # the demo's MLP is empty past level 15
        (["train.eval_train_examples=0"], "train.eval_train_examples"),
        (["train.optimizer.lr=.inf"], "train.optimizer.lr"),
        (["pruning.finetune_lr=.nan"], "pruning.finetune_lr"),
        (["sweep.branch.num_alphas=100000000"], "sweep.branch.num_alphas"),
        (["name=."], "name"),
        (["name=.."], "name"),
    ],
)
def test_bad_config_exit_2_and_nothing_written(tmp_path, capsys, sets, field):
    store = tmp_path / "store"
    args = ["run", DEMO, "--store", str(store)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and field in err, err
    assert not store.exists()


def test_missing_config_file_and_bad_arguments(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml"), "--store", str(tmp_path / "s")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["run"])
    assert e.value.code == 2
    assert main(["status", "--store", str(tmp_path / "s")]) == 2
    assert not (tmp_path / "s").exists()


def test_plan_json(capsys):
    assert main(["plan", DEMO, "--json", *tiny_args()]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["jobs"] == len(_plan().jobs) == 25
    # 13 IMP train jobs + pruning at init: 2 methods x 2 levels x (the method, its shuffle)
    assert summary["by_kind"] == {"interpolate": 4, "train": 21}
    assert summary["at_init_jobs_by_method"] == {"snip": 2, "snip+shuffle": 2, "synflow": 2, "synflow+shuffle": 2}
