"""The store: atomic writes, deterministic part files, Parquet round trips."""
from __future__ import annotations

import json
import os

import pytest

from orchestrator.schemas import TABLES
from orchestrator.store import Store


def _run_row(job_id: str, level: int, density: float) -> dict:
    return {
        "job_id": job_id, "parent_job_id": None, "role": "level", "replicate": 0, "rewind_iter": 0,
        "level": level, "data_seed": 0, "retrain": "rewind", "prune_strategy": "magnitude_global",
        "density": density, "start_iter": 0, "end_iter": 10, "test_loss": 1.5, "test_accuracy": 0.5,
        "train_loss": 1.25, "train_accuracy": 0.625, "wall_seconds": 3.0, "attempts": 1, "host": "h",
        "node": "n", "device": "cpu", "world_size": 1, "config_hash": "c0", "deterministic": True, "diverged": False,
        "weights_path": f"artifacts/{job_id}/weights.pt",
        "mask_path": f"artifacts/{job_id}/mask.pt", "weight_correlation": 0.9,
        "granularity": "weight", "channel_density": None, "flops_fraction": 1.0, "disconnected": False,
        "ticket_source": None, "ticket_source_data": None, "ticket_source_optimizer": None,
    }


@pytest.fixture(params=["path", "file_url", "memory"])
def store(request, tmp_path):
    if request.param == "path":
        return Store(str(tmp_path / "store"))
    if request.param == "file_url":
        return Store((tmp_path / "store").as_uri())
    # fsspec's in-memory filesystem: a non-POSIX filesystem reached through pyarrow's fsspec bridge
    return Store(f"memory://lth-test-{os.getpid()}-{tmp_path.name}")


def test_remote_flag(tmp_path):
    assert not Store(str(tmp_path)).is_remote
    assert Store(tmp_path.as_uri()).is_remote  # file:// goes through the copy-to-scratch path
    with pytest.raises(ValueError, match="remote"):
        Store(tmp_path.as_uri()).local_path("artifacts")


def test_rows_round_trip_with_schema(store):
    store.write_rows("runs", "exp1", [_run_row("a", 0, 1.0), _run_row("b", 1, 0.8)], part="a")
    store.write_rows("runs", "exp2", [_run_row("c", 0, 1.0)], part="c")
    both = store.read_table("runs")
    assert both.schema == TABLES["runs"]
    assert both.num_rows == 3
    one = store.read_table("runs", "exp1")
    assert sorted(one.column("job_id").to_pylist()) == ["a", "b"]
    assert set(one.column("experiment").to_pylist()) == {"exp1"}
    assert sorted(one.column("density").to_pylist()) == [0.8, 1.0]
    assert one.column("parent_job_id").null_count == 2
    # a table nobody wrote yet reads as empty with its full schema
    empty = store.read_table("instability", "exp1")
    assert empty.num_rows == 0 and empty.schema == TABLES["instability"]


def test_part_named_by_job_is_idempotent(store):
    rows = [_run_row("a", 0, 1.0)]
    first = store.write_rows("runs", "e", rows, part="a")
    before = store.read_bytes(first)
    second = store.write_rows("runs", "e", rows, part="a")  # a driver rerun after a crash
    assert first == second == "results/runs/experiment=e/part-a.parquet"
    assert store.read_bytes(second) == before
    assert store.read_table("runs", "e").num_rows == 1
    assert store.published_keys("runs", "e") == {"a"}
    store.append("runs", "e", [_run_row("z", 2, 0.64)])
    assert store.read_table("runs", "e").num_rows == 2


def test_missing_column_is_named(store):
    row = _run_row("a", 0, 1.0)
    del row["density"]
    with pytest.raises(KeyError, match="density"):
        store.write_rows("runs", "e", [row], part="a")
    with pytest.raises(ValueError, match="unknown table"):
        store.write_rows("nope", "e", [row], part="a")


def test_atomic_write_leaves_no_temporaries_and_readers_skip_them(tmp_path):
    store = Store(str(tmp_path))
    store.write_rows("runs", "e", [_run_row("a", 0, 1.0)], part="a")
    part_dir = tmp_path / "results/runs/experiment=e"
    assert sorted(os.listdir(part_dir)) == ["part-a.parquet"]
    # a temporary left by a writer killed mid-write is invisible to readers
    (part_dir / ".tmp-deadbeef-part-b.parquet").write_bytes(b"PAR1 truncated")
    assert store.read_table("runs", "e").num_rows == 1
    assert store.published_keys("runs", "e") == {"a"}


def test_done_and_failed_records(store):
    assert not store.is_done("j1")
    store.write_failed("j1", "Traceback: boom", attempts=3)
    assert store.failed_record("j1")["attempts"] == 3
    listing = store.scan_artifacts()
    assert listing.failed() == {"j1"} and listing.done() == set()
    store.write_done("j1", {"job_id": "j1", "attempts": 1})
    assert store.is_done("j1") and store.done_record("j1") == {"job_id": "j1", "attempts": 1}
    assert store.failed_record("j1") is None  # a later success clears the failure
    store.write_bytes("artifacts/j2/checkpoint.pt", b"x")
    listing = store.scan_artifacts()
    assert listing.done() == {"j1"} and listing.checkpointed() == {"j2"} and listing.failed() == set()


def test_upload_download_round_trip(store, tmp_path):
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(1000))
    store.upload(str(src), "artifacts/j/weights.pt")
    dst = tmp_path / "scratch/in/w.bin"
    store.download("artifacts/j/weights.pt", str(dst))
    assert dst.read_bytes() == src.read_bytes()
    assert store.list_files("artifacts/j") == ["weights.pt"]


def test_experiment_plan_and_heartbeat(store):
    store.write_experiment("demo", "name: demo\n", {"a": {"kind": "train"}, "b": {"kind": "interpolate"}})
    assert store.experiments() == ["demo"]
    assert set(store.planned_jobs("demo")) == {"a", "b"}
    with pytest.raises(FileNotFoundError, match="never been run"):
        store.planned_jobs("other")
    store.write_heartbeat("demo", ["a"])
    assert store.heartbeat("demo")["running"] == ["a"]


# ---- staging and publishing: raw readers see each row once, at every instant ------------------


def _rows(table) -> list[tuple]:
    """A table's rows as a sorted list: a multiset comparison that ignores file order."""
    return sorted(tuple(sorted(r.items(), key=lambda kv: kv[0])) for r in table.to_pylist())


def _stage_jobs(store: Store, ids, experiment: str = "e") -> None:
    for i, job in enumerate(ids):
        store.stage_rows("runs", experiment, [_run_row(job, i, 0.5**i), _run_row(job, i + 1, 0.5**i)], key=job)


def _raw(root) -> list[str]:
    """The documented reading path (README "Results"): a hive dataset over results/<table>."""
    import pyarrow.dataset as ds

    path = os.path.join(str(root), "results", "runs")
    if not os.path.isdir(path):
        return []
    return sorted(ds.dataset(path, partitioning="hive").to_table().column("job_id").to_pylist())


def _analysis_rows(root: str, experiment: str = "e") -> list[tuple]:
    from orchestrator.analysis.read import RUNS_COLUMNS, Store as AnalysisStore, read_table

    return _rows(read_table(AnalysisStore.open(root), "runs", experiment, RUNS_COLUMNS))


def test_staged_rows_are_invisible_until_published_as_one_file(store):
    ids = [f"j{i}" for i in range(6)]
    _stage_jobs(store, ids)
    store.write_rows("runs", "other", [_run_row("x", 0, 1.0)], part="x")
    assert store.read_table("runs", "e").num_rows == 0  # staged: not published yet
    assert store.staged_keys("runs", "e") == set(ids) == store.stored_keys("runs", "e")
    assert store.publish("runs", "e") == 6
    [published] = store.partition_files("runs", "e")
    assert published.startswith("results/runs/experiment=e/part-")
    assert store.staged_keys("runs", "e") == set() and store.list_files("staging/runs/experiment=e") == []
    assert sorted(store.read_table("runs", "e").column("job_id").to_pylist()) == sorted(ids * 2)
    assert store.published_keys("runs", "e") == set(ids) == store.stored_keys("runs", "e")
    assert store.publish("runs", "e") == 0  # nothing staged: no new file
    assert store.read_table("runs").num_rows == 13  # the other experiment is untouched
    _stage_jobs(store, ["k0"])
    assert store.publish("runs", "e") == 1
    assert len(store.partition_files("runs", "e")) == 2  # a published file is never rewritten


def test_rows_staged_by_an_older_lth_as_parquet_are_published_and_replaced_like_the_rest(store):
    """Rows are staged as Arrow IPC files now; a store staged before holds Parquet ones, which
    count as staged, are published beside the new ones, and are replaced when their job finishes
    again (never published twice)."""
    def stage_as_before(job: str, value: float) -> None:
        store.write_bytes(f"staging/runs/experiment=e/{job}.parquet", Store._parquet_bytes("runs", [_run_row(job, 0, value)]))

    stage_as_before("old", 0.25)
    stage_as_before("again", 0.5)
    _stage_jobs(store, ["new"])
    store.stage_rows("runs", "e", [_run_row("again", 0, 0.75)], key="again")  # the job finished again
    assert sorted(store.list_files("staging/runs/experiment=e")) == ["again.arrow", "new.arrow", "old.parquet"]
    assert store.staged_keys("runs", "e") == {"old", "again", "new"}
    assert store.is_staged("runs", "e", "old") and store.is_staged("runs", "e", "again")
    assert store.publish("runs", "e") == 3
    rows = store.read_table("runs", "e").to_pylist()
    assert sorted(r["job_id"] for r in rows) == ["again", "new", "new", "old"]
    assert {r["job_id"]: r["density"] for r in rows if r["job_id"] != "new"} == {"old": 0.25, "again": 0.75}
    assert store.list_files("staging/runs/experiment=e") == []


def test_a_job_staged_both_as_parquet_and_as_arrow_is_published_once(store):
    """stage_job_rows writes a job's new .arrow and then deletes its older .parquet: a driver
    killed in between left both, and publish read both (the job's rows twice in results/)."""
    store.write_bytes("staging/runs/experiment=e/again.parquet", Store._parquet_bytes("runs", [_run_row("again", 0, 0.5)]))
    store.write_bytes("staging/runs/experiment=e/again.arrow", Store._arrow_bytes("runs", [_run_row("again", 0, 0.75)]))
    assert store.publish("runs", "e") == 1
    assert [(r["job_id"], r["density"]) for r in store.read_table("runs", "e").to_pylist()] == [("again", 0.75)]
    assert store.list_files("staging/runs/experiment=e") == []


@pytest.mark.parametrize("suffix", [".arrow", ".parquet"])
def test_an_unreadable_staged_file_is_named_before_it_stops_a_publish(tmp_path, suffix):
    """A staged file cut short (a full disk, a copy of the store that stopped) made every
    publish raise ArrowInvalid, at the end of every `lth run`: nothing was published, ever
    again. The lock holder's stored_keys names it (DamagedParts, as for a published part), so
    `lth run` sets it aside and stages the job's rows again from its done record."""
    from orchestrator.store import DamagedParts

    store = Store(str(tmp_path))
    _stage_jobs(store, ["good", "bad"])
    bad = f"staging/runs/experiment=e/bad{suffix}"
    if suffix == ".parquet":  # as an older lth staged it
        store.delete("staging/runs/experiment=e/bad.arrow")
        store.write_bytes(bad, Store._parquet_bytes("runs", [_run_row("bad", 0, 1.0)]))
    store.write_bytes(bad, store.read_bytes(bad)[:100])
    assert store.stored_keys("runs", "e", finish_publish=False) == {"good", "bad"}  # (lth status reads no file)
    with pytest.raises(DamagedParts, match=f"bad{suffix}") as caught:
        store.stored_keys("runs", "e")
    assert [rel for rel, _ in caught.value.parts] == [bad]
    store.set_aside_part(bad)
    assert store.stored_keys("runs", "e") == {"good"}
    assert store.publish("runs", "e") == 1 and _raw(tmp_path) == ["good", "good"]


@pytest.mark.parametrize("crash_at", ["before_batch", "after_batch", "after_one_delete"])
def test_publish_killed_at_any_step_shows_each_row_once(tmp_path, monkeypatch, crash_at):
    """A raw pyarrow scan of results/runs, taken right after the crash and after the next
    publish, holds every job's rows exactly once or (before the batch file) not yet."""
    store = Store(str(tmp_path))
    ids = [f"j{i}" for i in range(5)]
    _stage_jobs(store, ids)
    real_delete, real_atomic = store.delete, store._atomic_output
    deleted = []

    def crash_delete(rel):
        if crash_at == "after_batch" or (crash_at == "after_one_delete" and deleted):
            raise KeyboardInterrupt
        deleted.append(rel)
        real_delete(rel)

    def crash_atomic(rel, *args, **kwargs):
        if rel.startswith("results/"):
            raise KeyboardInterrupt
        return real_atomic(rel, *args, **kwargs)

    if crash_at == "before_batch":
        monkeypatch.setattr(store, "_atomic_output", crash_atomic)
    else:
        monkeypatch.setattr(store, "delete", crash_delete)
    with pytest.raises(KeyboardInterrupt):
        store.publish("runs", "e")
    monkeypatch.undo()
    expected = sorted(ids * 2)
    assert _raw(tmp_path) == ([] if crash_at == "before_batch" else expected)
    assert store.stored_keys("runs", "e") == set(ids)  # staged or published: never staged again
    assert _raw(tmp_path) == ([] if crash_at == "before_batch" else expected)
    _stage_jobs(store, ["k0"])
    store.publish("runs", "e")
    assert _raw(tmp_path) == sorted(expected + ["k0", "k0"])
    assert len(_analysis_rows(str(tmp_path))) == 12
    assert store.list_files("staging/runs/experiment=e") == []  # leftovers and the intent are gone


def test_unreadable_published_file_is_named(tmp_path):
    from orchestrator.progress import experiment_status
    from orchestrator.store import DamagedParts

    store = Store(str(tmp_path))
    store.write_rows("runs", "e", [_run_row("a", 0, 1.0)], part="a")
    store.write_bytes("results/runs/experiment=e/part-bad.parquet", b"not parquet")
    with pytest.raises(DamagedParts, match="part-bad.parquet") as caught:
        store.published_keys("runs", "e")
    assert [rel for rel, _ in caught.value.parts] == ["results/runs/experiment=e/part-bad.parquet"]  # only it
    # `lth status` still answers (issue 27: a traceback): `lth run` will write those rows again
    store.write_experiment("e", "name: e\n", {"a": {"kind": "train", "role": "level", "level": 0, "parents": []}})
    store.write_rows("metrics", "e", [{"job_id": "a", "iteration": 10, "split": "test", "loss": 1.5, "accuracy": 0.5,
                                       "config_hash": "c0"}], part="a")
    store.write_json("artifacts/a/done.json", {"result": {}})
    assert experiment_status(store, "e").counts.done == 1
    aside = store.set_aside_part("results/runs/experiment=e/part-bad.parquet")
    assert aside.startswith("damaged/results/runs/experiment=e/part-bad.parquet.corrupt-")
    assert store.read_bytes(aside) == b"not parquet" and store.published_keys("runs", "e") == {"a"}


def test_sweep_publishes_its_rows_and_a_rerun_writes_nothing(ray_session, tmp_path, capsys):
    """`lth run` end to end: one published file per table, every row once in a raw scan, no
    staged file left; a rerun writes no file."""
    from conftest import DEMO, tiny_args
    from orchestrator.cli import main
    from orchestrator.planner import plan
    from orchestrator.spec import load_spec

    extra = ("pruning.levels=1", "sweep.rewind_iters=[0]", "sweep.branch.levels=[1]", "tracking.wandb=disabled")
    root = tmp_path / "store"
    assert main(["run", DEMO, "--store", str(root), *tiny_args(*extra)]) == 0
    sets = [a for a in tiny_args(*extra) if a != "--set"]
    train = sorted(j.id for j in plan(load_spec(DEMO, sets)).jobs.values() if j.kind == "train")
    store = Store(str(root))
    for table in TABLES:
        if table == "early_bird":  # the demo has no early-bird search: no rows, no part file
            assert store.list_files(f"results/{table}/experiment=demo") == []
            continue
        assert len(store.list_files(f"results/{table}/experiment=demo")) == 1, table
        assert store.list_files(f"staging/{table}/experiment=demo") == [], table
    assert _raw(root) == train
    listing = {t: store.list_files(f"results/{t}/experiment=demo") for t in TABLES}
    capsys.readouterr()
    assert main(["run", DEMO, "--store", str(root), *tiny_args(*extra)]) == 0
    assert "ran 0 jobs" in capsys.readouterr().out
    assert {t: store.list_files(f"results/{t}/experiment=demo") for t in TABLES} == listing
    assert _raw(root) == train
