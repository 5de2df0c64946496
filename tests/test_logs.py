"""Each job attempt's output kept under its artifacts, and `lth logs` (no Ray)."""
from __future__ import annotations

import logging
import warnings

import pytest

from orchestrator.cli import main
from orchestrator.store import Store
from orchestrator.worker import job_log


def test_a_job_log_keeps_prints_warnings_logging_and_the_traceback(tmp_path, capsys):
    store = Store(str(tmp_path / "store"))
    with job_log(store, ["abc123", "abd999"], attempt=1):
        print("hello from the job")
        logging.getLogger("trainer").warning("a log record")
    with pytest.raises(RuntimeError):
        with job_log(store, ["abc123"], attempt=2):
            warnings.warn("a warning")
            raise RuntimeError("the job broke")
    first = (tmp_path / "store/artifacts/abc123/attempt-1.log").read_text()
    assert "hello from the job" in first and "a log record" in first and first.rstrip().endswith("finished")
    assert (tmp_path / "store/artifacts/abd999/attempt-1.log").read_text() == first  # the pack-mate's copy
    second = (tmp_path / "store/artifacts/abc123/attempt-2.log").read_text()
    assert "a warning" in second and "RuntimeError: the job broke" in second and second.rstrip().endswith("failed")

    capsys.readouterr()
    assert main(["logs", "abc", "--store", store.root]) == 0  # a unique prefix
    out = capsys.readouterr().out
    assert out.index("hello from the job") < out.index("the job broke")  # attempts in order
    assert main(["logs", "abc123", "--attempt", "2", "--store", store.root]) == 0
    assert "hello" not in capsys.readouterr().out
    assert main(["logs", "ab", "--store", store.root]) == 2  # ambiguous: named
    assert "2 jobs (abc123, abd999)" in capsys.readouterr().err
    assert main(["logs", "zz", "--store", store.root]) == 2
    assert "no job" in capsys.readouterr().err
