"""What a job trusts of the store, without Ray: set-aside names, the worker's own checksums of its
outputs (orchestrator/integrity.py), and a job's rows when it finishes again (orchestrator/rows.py)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import pytest

from orchestrator.graph import Job, JobMeta
from orchestrator.integrity import aside_name, result_problem, seal, seal_from_record, set_aside
from orchestrator.rows import RowsDisagree, write_job_rows
from orchestrator.schemas import TABLES
from orchestrator.store import CHECKSUMS, RESULT, Store


def test_set_asides_of_one_file_never_collide(tmp_path):
    """Two damaged copies of one file set aside within the same second (the old name had one-second
    resolution: the second overwrote the first) are both kept, each with its own bytes."""
    store = Store(str(tmp_path / "store"))
    kept = []
    for i in range(5):
        store.write_bytes(Store.artifact("j", "weights.pt"), f"damaged copy {i}".encode())
        kept.append(set_aside(store, "j", "weights.pt"))
    assert len(set(kept)) == 5
    assert [store.read_bytes(rel) for rel in kept] == [f"damaged copy {i}".encode() for i in range(5)]
    assert not store.exists(Store.artifact("j", "weights.pt"))
    assert set_aside(store, "j", "weights.pt") is None  # nothing left to set aside
    names = {aside_name("weights.pt") for _ in range(1000)}
    assert len(names) == 1000
    # never taken for an output (outputs end in .pt or .json), and it says what it was
    assert all(n.startswith("weights.pt.corrupt-") and not n.endswith((".pt", ".json")) for n in names)


def _finished(out):
    """A job directory as a finished train job leaves it, sealed by its worker."""
    out.mkdir(parents=True)
    (out / "weights.pt").write_bytes(b"w" * 1000)
    (out / "mask.pt").write_bytes(b"m" * 100)
    (out / "w_0.pt").write_bytes(b"0" * 1000)
    (out / RESULT).write_text(json.dumps({"test_accuracy": 0.9}))
    (out / "checkpoint.pt").write_bytes(b"an in-job checkpoint has no sum")
    return seal(str(out))


def test_a_result_is_reused_only_when_every_output_matches_the_workers_checksums(tmp_path):
    out = tmp_path / "job"
    sums = _finished(out)
    assert set(sums) == {"weights.pt", "mask.pt", "w_0.pt", RESULT}  # the checkpoint is not an output
    assert sums["weights.pt"] == hashlib.sha256(b"w" * 1000).hexdigest()  # an independent hash
    on_disk = json.loads((out / CHECKSUMS).read_text())
    assert {k: v for k, v in on_disk.items() if k != CHECKSUMS} == sums
    assert result_problem(str(out)) is None

    # issue 27: checksums.json altered (a sum changed), the outputs intact: the sums file is
    # blamed and set aside, never the intact weights.pt
    good = (out / CHECKSUMS).read_text()
    (out / CHECKSUMS).write_text(json.dumps({**on_disk, "weights.pt": "0" * 64}))
    problem, damaged = result_problem(str(out))
    assert damaged == [CHECKSUMS] and "weights.pt" not in problem, problem
    (out / CHECKSUMS).write_text(good)
    assert result_problem(str(out)) is None

    data = bytearray((out / "weights.pt").read_bytes())
    data[500:516] = bytes(16)  # 16 bytes flipped: the file still loads, with other numbers
    (out / "weights.pt").write_bytes(bytes(data))
    problem, damaged = result_problem(str(out))
    assert damaged == ["weights.pt"] and "weights.pt does not match its checksum" in problem

    (out / "weights.pt").write_bytes(b"w" * 1000)
    (out / RESULT).write_text(json.dumps({"test_accuracy": 0.1}))  # the numbers rows are made of
    assert result_problem(str(out))[1] == [RESULT]
    (out / RESULT).write_text(json.dumps({"test_accuracy": 0.9}))

    (out / "w_10.pt").write_bytes(b"written after the sums")  # (a replay that died before sealing)
    problem, damaged = result_problem(str(out))
    assert damaged == ["w_10.pt"] and "w_10.pt has no checksum" in problem
    (out / "w_10.pt").unlink()

    (out / "w_0.pt").unlink()
    assert result_problem(str(out)) == ("w_0.pt is missing", [])
    (out / "w_0.pt").write_bytes(b"0" * 1000)

    (out / CHECKSUMS).write_text('{"weights.pt": ')  # cut short
    assert result_problem(str(out))[1] == [CHECKSUMS]
    (out / CHECKSUMS).unlink()  # a worker that died before sealing, or a store older than the sums
    problem, damaged = result_problem(str(out))
    assert "no checksums.json" in problem and damaged == []

    (out / RESULT).unlink()
    assert result_problem(str(out)) is None  # no result: the job trains, nothing to verify


def test_a_store_from_before_checksums_json_is_sealed_from_its_done_records(tmp_path):
    """A done job of an older store (sums in done.json only) that runs again reusing its outputs
    (a dense run gaining a rewinding point) is verified against the sums of its done record, and
    its result.json only while it says what the record says."""
    store = Store(str(tmp_path / "store"))
    out = tmp_path / "store" / "artifacts" / "j"
    sums = _finished(out)
    (out / CHECKSUMS).unlink()
    result = {"test_accuracy": 0.9}
    record = {"checksums": {k: v for k, v in sums.items() if k != RESULT}, "result": result}
    store.write_json(Store.artifact("j", "done.json"), record)
    (out / RESULT).write_text(json.dumps({"test_accuracy": 0.8}))  # not what the rows were made from
    assert not seal_from_record(store, "j") and not (out / CHECKSUMS).exists()
    (out / RESULT).write_text(json.dumps(result))
    assert seal_from_record(store, "j")
    assert result_problem(str(out)) is None
    (out / "mask.pt").write_bytes(b"M" + b"m" * 99)
    assert result_problem(str(out))[1] == ["mask.pt"]


def _job() -> Job:
    meta = JobMeta(experiment="e", role="level", replicate=0, rewind_iter=0, level=1, data_seed=0,
                   retrain="rewind", prune_strategy="magnitude_global", density=0.5, parent_job_id="p",
                   config_hash="c")
    return Job(id="j", kind="train", spec=None, parents=("p",), meta=meta)  # type: ignore[arg-type]


def _record(test_accuracy: float, host: str = "a", attempts: int = 1) -> dict:
    result = {"density": 0.5, "start_iter": 0, "end_iter": 40, "test_loss": 0.5, "test_accuracy": test_accuracy,
              "train_loss": 0.4, "train_accuracy": 0.95, "deterministic": True,
              "weights_path": "artifacts/j/weights.pt", "mask_path": "artifacts/j/mask.pt",
              "metrics": [{"iteration": 40, "split": "test", "loss": 0.5, "accuracy": test_accuracy}]}
    return {"result": result, "wall_seconds": 3.0, "attempts": attempts, "host": host, "node": "n", "device": "cpu"}


def _accuracies(store: Store, table: str = "runs") -> list[float]:
    column = "test_accuracy" if table == "runs" else "accuracy"
    return store.read_table(table, "e").column(column).to_pylist()


def test_a_job_finished_again_replaces_its_staged_rows_and_never_contradicts_published_ones(tmp_path):
    store = Store(str(tmp_path / "store"))
    stored = {t: set() for t in TABLES}
    write_job_rows(store, "e", _job(), _record(0.90), stored)
    write_job_rows(store, "e", _job(), _record(0.80), stored)  # redone before a publish: replaced
    store.publish("runs", "e")
    store.publish("metrics", "e")
    assert _accuracies(store) == [0.80] and _accuracies(store, "metrics") == [0.80]

    # finished again elsewhere, later, more attempts, in the experiment grown since (another
    # config hash): the same results, nothing written twice
    grown = _job()
    grown = Job(id=grown.id, kind=grown.kind, spec=None, parents=grown.parents,  # type: ignore[arg-type]
                meta=dataclasses.replace(grown.meta, config_hash="grown"))
    write_job_rows(store, "e", grown, _record(0.80, host="b", attempts=3), stored)
    assert store.publish("runs", "e") == 0 and store.publish("metrics", "e") == 0

    with pytest.raises(RowsDisagree, match="test_accuracy") as e:
        write_job_rows(store, "e", _job(), _record(0.70), stored)
    assert "--set name=" in str(e.value)
    # refused before anything was written: the published rows stand alone
    assert store.publish("runs", "e") == 0 and store.publish("metrics", "e") == 0
    assert _accuracies(store) == [0.80]
    assert not os.listdir(tmp_path / "store" / "staging" / "runs" / "experiment=e")
