"""How far a running train job is: written by its worker at each evaluation, read by the driver.

The worker prints one line per evaluation into the job's attempt log (`lth logs`) and rewrites
`artifacts/<id>/progress.json`: the iteration reached and the training rate. The rate is
measured from the attempt's first evaluation (at its start iteration, after the data set is
loaded and the model built), so a worker's cold start never counts as slow training.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from orchestrator.store import Store

PROGRESS = "progress.json"


@dataclass
class JobProgress:
    iteration: int  # the last evaluated iteration
    start_iter: int
    stop_iter: int
    rate: float | None  # iterations per second since the attempt's first evaluation (None: one so far)
    time: float

    @property
    def iterations_done(self) -> int:
        return max(0, self.iteration - self.start_iter)


class EvalReporter:
    """The worker side: a `Runtime.on_metric` companion for one train job's attempt."""

    def __init__(self, store: Store, job: Any, clock=time.time):
        from trainers.train import lr_for

        self.store, self.job, self.clock = store, job, clock
        self._lr_for = lr_for
        self._first: tuple[int, float] | None = None  # (iteration, time) of the first evaluation
        self._last: tuple[int, float] | None = None  # of the previous one (images/s between two)
        self._seen: dict[int, dict[str, Any]] = {}

    def __call__(self, row: Any) -> None:
        spec = self.job.spec
        now = self.clock()
        it = int(row.iteration)
        if self._first is None:
            self._first = (it, now)
        split = self._seen.setdefault(it, {})
        split[row.split] = row
        if len(split) < 2:  # an evaluation is a test row and a train row: one line once both are in
            return
        del self._seen[it]
        images = "-"
        if self._last is not None and it > self._last[0] and now > self._last[1]:
            images = f"{(it - self._last[0]) * spec.train.batch_size / (now - self._last[1]):.0f}"
        self._last = (it, now)
        test, train = split.get("test"), split.get("train")
        print(f"eval iteration {it}/{spec.stop_iter}: test loss {test.loss:.4g} accuracy {100 * test.accuracy:.2f}%, "
              f"train loss {train.loss:.4g} accuracy {100 * train.accuracy:.2f}%, "
              f"lr {self._lr_for(spec, min(it, spec.stop_iter - 1)):.4g}, images/s {images}", flush=True)
        f_it, f_time = self._first
        rate = (it - f_it) / (now - f_time) if it > f_it and now > f_time else None
        try:
            # not durable (no fsync: two per job were a fifth of a short job's time on a busy
            # disk): after a crash the file is the last report or empty, which reads as none yet
            self.store.write_json(Store.artifact(self.job.id, PROGRESS),
                                  {"iteration": it, "start_iter": spec.start_iter, "stop_iter": spec.stop_iter,
                                   "rate": rate, "time": now}, durable=False)
        except OSError:
            pass  # progress is a convenience: never the reason a job fails


def read_progress(store: Store, job_id: str) -> JobProgress | None:
    """A running job's last progress report (None: none yet, or unreadable mid-write)."""
    try:
        d = store.read_json(Store.artifact(job_id, PROGRESS))
        return JobProgress(int(d["iteration"]), int(d["start_iter"]), int(d["stop_iter"]),
                           None if d.get("rate") is None else float(d["rate"]), float(d["time"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
