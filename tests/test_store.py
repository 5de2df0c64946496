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
        "node": "n", "device": "cpu", "weights_path": f"artifacts/{job_id}/weights.pt",
        "mask_path": f"artifacts/{job_id}/mask.pt",
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
    assert store.parts("runs", "e") == {"a"}
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
    assert store.parts("runs", "e") == {"a"}


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


# ---- compaction ------------------------------------------------------------------------------


def _rows(table) -> list[tuple]:
    """A table's rows as a sorted list: a multiset comparison that ignores file order."""
    return sorted(tuple(sorted(r.items(), key=lambda kv: kv[0])) for r in table.to_pylist())


def _write_jobs(store: Store, ids, experiment: str = "e") -> None:
    for i, job in enumerate(ids):
        store.write_rows("runs", experiment, [_run_row(job, i, 0.5**i), _run_row(f"{job}-b", i, 0.5**i)], part=job)


def _analysis_rows(root: str, experiment: str = "e") -> list[tuple]:
    from orchestrator.analysis.read import RUNS_COLUMNS, Store as AnalysisStore, read_table

    return _rows(read_table(AnalysisStore.open(root), "runs", experiment, RUNS_COLUMNS))


def _merged_list(store: Store, rel: str) -> list[str]:
    import pyarrow.parquet as pq

    return json.loads(pq.read_schema(store.path(rel), filesystem=store.fs).metadata[b"lth.merged"])


def test_compaction_merges_parts_and_keeps_every_row(store):
    ids = [f"j{i}" for i in range(6)]
    _write_jobs(store, ids)
    store.write_rows("runs", "other", [_run_row("x", 0, 1.0)], part="x")
    before = _rows(store.read_table("runs", "e"))
    assert store.compact("runs", "e", min_files=7) == 0  # below the threshold: untouched
    assert len(store.partition_files("runs", "e")) == 6
    assert store.compact("runs", "e", min_files=6) == 6
    [compacted] = store.partition_files("runs", "e")
    assert compacted.startswith("results/runs/experiment=e/part-compacted-")
    assert store.list_files("results/runs/experiment=e") == [compacted.rsplit("/", 1)[1]]  # parts deleted
    assert sorted(_merged_list(store, compacted)) == sorted(f"part-{j}.parquet" for j in ids)
    assert _rows(store.read_table("runs", "e")) == before and len(before) == 12
    assert store.parts("runs", "e") == set(ids)  # merged jobs still count as stored
    assert store.read_table("runs").num_rows == 13  # the other experiment is untouched
    assert store.partition_files("runs", "other") == ["results/runs/experiment=other/part-x.parquet"]


def test_crash_between_compacted_file_and_deletes_shows_no_row_twice(tmp_path, monkeypatch):
    from orchestrator.analysis.read import RUNS_COLUMNS

    store = Store(str(tmp_path))
    ids = [f"j{i}" for i in range(5)]
    _write_jobs(store, ids)
    before = _rows(store.read_table("runs", "e"))
    deleted = []

    def crash_after_two(rel):  # the driver dies after the compacted file and two deletes
        if len(deleted) == 2:
            raise KeyboardInterrupt
        deleted.append(rel)
        os.remove(store.path(rel))

    monkeypatch.setattr(store, "delete", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        store.compact("runs", "e", min_files=2)
    monkeypatch.undo()
    part_dir = tmp_path / "results/runs/experiment=e"
    assert len(list(part_dir.glob("part-compacted-*.parquet"))) == 1
    assert len(list(part_dir.glob("part-j*.parquet"))) == 3  # leftovers of the merged parts
    assert _rows(store.read_table("runs", "e")) == before
    assert _analysis_rows(str(tmp_path)) == _rows(store.read_table("runs", "e").select(RUNS_COLUMNS))
    assert len(_analysis_rows(str(tmp_path))) == 10
    assert store.parts("runs", "e") == set(ids)
    # the next compaction (with a new part) deletes the leftovers and keeps every row once
    _write_jobs(store, ["k0"])
    assert store.compact("runs", "e", min_files=2) == 2
    assert [p.name for p in part_dir.iterdir()] == [p.name for p in part_dir.glob("part-compacted-*")]
    assert len(list(part_dir.iterdir())) == 1
    assert store.read_table("runs", "e").num_rows == 12
    assert len(_analysis_rows(str(tmp_path))) == 12


def test_compacting_twice_carries_the_merged_list(store):
    _write_jobs(store, ["a", "b", "c"])
    assert store.compact("runs", "e", min_files=2) == 3
    [first] = store.partition_files("runs", "e")
    _write_jobs(store, ["d", "e2"])
    assert store.compact("runs", "e", min_files=3) == 3  # the first compacted file + 2 parts
    [second] = store.partition_files("runs", "e")
    assert second != first and not store.exists(first)
    assert sorted(_merged_list(store, second)) == sorted(
        [first.rsplit("/", 1)[1]] + [f"part-{j}.parquet" for j in ["a", "b", "c", "d", "e2"]])
    ids = store.read_table("runs", "e").column("job_id").to_pylist()
    assert sorted(ids) == sorted(j + s for j in ["a", "b", "c", "d", "e2"] for s in ["", "-b"])
    assert store.parts("runs", "e") == {"a", "b", "c", "d", "e2"}


def test_rerun_after_compaction_writes_no_duplicate_rows(tmp_path):
    """The scheduler's backfill (Scheduler._backfill_rows) writes a done job's rows only when
    parts() lacks it; a leftover part rewritten after a compaction stays hidden too."""
    store = Store(str(tmp_path))
    ids = [f"j{i}" for i in range(4)]
    _write_jobs(store, ids)
    store.compact("runs", "e", min_files=2)
    for job in ids:  # a rerun of the finished sweep: backfill what parts() lacks
        if job not in store.parts("runs", "e"):
            _write_jobs(store, [job])
    assert len(store.list_files("results/runs/experiment=e")) == 1
    _write_jobs(store, ["j0"])  # even a rewrite of a merged job's part is never read twice
    assert store.read_table("runs", "e").num_rows == 8
    assert len(_analysis_rows(str(tmp_path))) == 8


def test_unreadable_compacted_file_is_named(tmp_path):
    store = Store(str(tmp_path))
    _write_jobs(store, ["a"])
    store.write_bytes("results/runs/experiment=e/part-compacted-bad.parquet", b"not parquet")
    with pytest.raises(ValueError, match="part-compacted-bad.parquet"):
        store.partition_files("runs", "e")


def test_sweep_compacts_its_tables_and_rerun_adds_nothing(ray_session, tmp_path, monkeypatch, capsys):
    """`lth run` end to end with a small compaction threshold: the driver leaves one compacted
    file per table, every row once, and a rerun writes no part file."""
    import functools

    import orchestrator.scheduler as scheduler
    from conftest import DEMO, tiny_args
    from orchestrator.cli import main
    from orchestrator.planner import plan
    from orchestrator.spec import load_spec

    monkeypatch.setattr(scheduler, "RunOptions", functools.partial(scheduler.RunOptions, compact_min_files=2))
    extra = ("pruning.levels=1", "sweep.rewind_iters=[0]", "sweep.branch.levels=[1]", "tracking.wandb=disabled")
    root = tmp_path / "store"
    assert main(["run", DEMO, "--store", str(root), *tiny_args(*extra)]) == 0
    sets = [a for a in tiny_args(*extra) if a != "--set"]
    train = sorted(j.id for j in plan(load_spec(DEMO, sets)).jobs.values() if j.kind == "train")
    store = Store(str(root))
    for table in ("runs", "metrics"):  # one part per train job: compacted
        [only] = store.list_files(f"results/{table}/experiment=demo")
        assert only.startswith("part-compacted-")
        assert store.parts(table, "demo") == set(train)
    runs = store.read_table("runs", "demo")
    assert sorted(runs.column("job_id").to_pylist()) == train
    listing = {t: store.list_files(f"results/{t}/experiment=demo") for t in TABLES}
    capsys.readouterr()
    assert main(["run", DEMO, "--store", str(root), *tiny_args(*extra)]) == 0
    assert "ran 0 jobs" in capsys.readouterr().out
    assert {t: store.list_files(f"results/{t}/experiment=demo") for t in TABLES} == listing
    assert sorted(store.read_table("runs", "demo").column("job_id").to_pylist()) == train
