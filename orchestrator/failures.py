"""What went wrong with a job, in words a person can act on.

Two questions the scheduler asks of every job that ends badly:
- is another attempt worth it? An error raised by the job's own input checks (a ValueError or
  TypeError: a bad argument, weights that hold NaN, a shape that does not fit) comes back
  identical on every attempt, so it fails at once; anything else (a CUDA out-of-memory, a
  lost file handle, a killed worker) may pass and is retried.
- did a job that finished actually learn? A train job whose loss is not finite diverged: it is
  recorded (done, `runs.diverged`), and its descendants are blocked rather than run on NaN
  weights.
"""
from __future__ import annotations

import math
import re
import traceback as tb
from dataclasses import dataclass
from typing import Any

DIVERGED = "diverged.json"  # artifacts/<id>/: present when a done train job diverged

# The job's own checks raise these; the same input raises them again. CheckpointError is a
# ValueError but a file read mid-write (a network file system) may read whole next time.
_DETERMINISTIC = (ValueError, TypeError, NotImplementedError)


@dataclass(frozen=True)
class Failure:
    reason: str  # one line: the exception's type and message
    traceback: str  # the job's own traceback (the worker's, not Ray's wrapper)
    retry: bool  # whether another attempt may succeed


def _cause(exc: BaseException) -> BaseException:
    """The job's own exception inside Ray's RayTaskError."""
    return getattr(exc, "cause", None) or exc


def classify(exc: BaseException) -> Failure:
    cause = _cause(exc)
    from trainers.checkpoint import CheckpointError

    text = getattr(exc, "traceback_str", None) or "".join(tb.format_exception(exc))
    retry = not isinstance(cause, _DETERMINISTIC) or isinstance(cause, CheckpointError)
    return Failure(reason=one_line(f"{type(cause).__name__}: {cause}"), traceback=text, retry=retry)


# Terminal colour and style codes: Ray writes them into its errors (a worker that died), which
# are shown as text, in a log file or a terminal that did not ask for colour.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def one_line(error: str) -> str:
    """The line of an error or traceback that says what happened (its last non-empty line)."""
    lines = [ln.strip() for ln in _ANSI.sub("", error).strip().splitlines() if ln.strip()]
    if not lines:
        return "?"
    # a message spanning lines ("ValueError: ...\n  details"): its first line names the type
    typed = [ln for ln in lines if ":" in ln and ln.split(":", 1)[0].replace(".", "").isidentifier()
             and ln.split(":", 1)[0].split(".")[-1].endswith(("Error", "Exception", "Interrupt", "Exit"))]
    return typed[-1] if typed else lines[-1]


def divergence(result: dict[str, Any]) -> str | None:
    """Why a finished train job diverged (its loss is not finite), or None when it did not."""
    metrics = result.get("metrics") or []
    bad = [m for m in metrics if not math.isfinite(float(m["loss"]))]
    finals = {s: result.get(f"{s}_loss") for s in ("test", "train")}
    first = result.get("nonfinite_iter")  # the training loss's first non-finite iteration: training stopped there
    if first is None and not bad and all(v is None or math.isfinite(float(v)) for v in finals.values()):
        return None
    shown = ", ".join(f"{s} loss {v}" for s, v in finals.items() if v is not None)
    if first is not None:
        return f"training loss not finite at iteration {first}, training stopped at {result.get('end_iter', '?')}: {shown}"
    # (a result written before training stopped at the first non-finite loss)
    since = f", not finite since iteration {min(int(m['iteration']) for m in bad)}" if bad else ""
    return f"{shown} at iteration {result.get('end_iter', '?')}{since}"


def likely_cause(job: Any) -> str:
    """The usual reason a run of this job's config diverges, with the values to change."""
    spec = getattr(job, "spec", None)
    train = getattr(spec, "train", None)
    if train is None:
        return "a learning rate too high for the model"
    if getattr(spec, "retrain", None) == "finetune" and getattr(spec, "prune", None) is not None:
        return f"a fine-tuning learning rate too high for the model (pruning.finetune_lr = {spec.finetune_lr})"
    lr = train.optimizer.lr
    warmup = getattr(train.schedule, "warmup_iters", None)
    tail = f", warmup {warmup} iterations" if warmup is not None else ""
    return f"a learning rate too high for the model (train.optimizer.lr = {lr:g}{tail})"


def blocked_message(ancestor: str, what: str, reason: str, cause: str, n_blocked: int) -> str:
    """The line saying why jobs below a diverged one do not run."""
    return (f"blocked {n_blocked} job{'s' if n_blocked != 1 else ''} below {ancestor} ({what}), which diverged "
            f"({reason}); likely cause: {cause}; they are not run (not retried): fork the experiment with "
            f"a fixed config (--set name=NEW ...)")
