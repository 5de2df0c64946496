"""What a sweep shows while it runs: ETA, done lines, timestamps (no Ray)."""
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
    assert lines[-1].endswith("done   j level r0 k0 L2 in 3.0s (1/1): test accuracy 0.9123, density 0.2500")
    interp = {"kind": "interpolate", "result": {"instability": [{"split": "test", "barrier": 0.0125},
                                                                {"split": "train", "barrier": -0.001}]}}
    assert _key_result(interp) == "test barrier +0.0125, train barrier -0.0010"
