"""Weights & Biases tracking: one W&B run per job attempt, grouped by experiment.

Tracking is a side channel: the store is the record of results. So every W&B call is wrapped,
and a W&B failure (no network, a full disk, a bad key) is a warning, never a failed job.

Modes: `online` (needs WANDB_API_KEY or a `wandb login`; without one it falls back to offline
with a warning), `offline` (runs land on disk under <TrackingSettings.dir>/wandb/, for `wandb
sync`), `disabled`. With a local store that is STORE/wandb/; set LTH_WANDB_DIR to choose the
parent directory (it must be local to the workers: W&B writes there while a job runs).
"""
from __future__ import annotations

import dataclasses
import http.client
import netrc
import os
import socket
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from orchestrator import wandb_breaker
from trainers.jobs import MetricRow

WandbMode = Literal["online", "offline", "disabled"]


@dataclass(frozen=True)
class TrackingSettings:
    mode: WandbMode = "disabled"
    project: str = "lth-sweep"
    entity: str | None = None
    dir: str | None = None  # runs land in <dir>/wandb/ (a local path)
    # online only: W&B's own init timeout is 90 s, paid per job by a service that never answers;
    # past this one, the sweep's breaker (wandb_breaker.py) sends every later job offline
    init_timeout: float = 30.0
    breaker: str | None = None  # the sweep's breaker file (online only)


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _service_problem(timeout: float = 3.0) -> str | None:
    """Why the W&B service does not answer from here (None: it does). One HTTP request with a
    deadline, once per command: a service that cannot be reached, or one that accepts the
    connection and never answers, otherwise costs every job W&B's own retries. Any HTTP answer
    counts (an error status too: W&B itself will say what it means)."""
    base = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    url = urllib.parse.urlsplit(base)
    host = url.hostname or "api.wandb.ai"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with urllib.request.urlopen(base.rstrip("/") + "/healthz", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, ssl.SSLCertVerificationError):
            return None  # it answered, in TLS; whether W&B trusts its certificate is W&B's to say
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return f"{host}:{port}: no answer within {timeout:g} s"
        return f"{host}:{port}: {getattr(reason, 'strerror', None) or reason or type(e).__name__}"


def decide_mode(mode: str) -> tuple[str, str | None]:
    """(the W&B mode to use, a warning to show once or None): `online` becomes `offline` when
    no API key is set (WANDB_API_KEY or `wandb login`'s netrc) or the service does not answer.
    `lth run` and `lth analyze --wandb` decide alike."""
    if mode != "online":
        return mode, None
    if not _has_api_key():
        return "offline", ("W&B is online but no API key is set (WANDB_API_KEY or `wandb login`): "
                           "logging offline instead; upload later with `wandb sync`")
    problem = _service_problem()
    if problem is not None:
        return "offline", (f"W&B is online but its service does not answer ({problem}): logging offline "
                           "instead; upload later with `wandb sync`")
    return mode, None


def resolve_settings(
    mode: str, project: str, entity: str | None, store_local_dir: str | None
) -> TrackingSettings:
    """The settings a sweep's jobs log with. `store_local_dir`: the store's directory, if local."""
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"tracking.wandb: expected online, offline or disabled, got {mode!r}")
    mode, warning = decide_mode(mode)
    if warning:
        warnings.warn(f"tracking.wandb: {warning}", stacklevel=2)
    run_dir = os.environ.get("LTH_WANDB_DIR")
    if run_dir is None:
        run_dir = store_local_dir or os.path.join(tempfile.gettempdir(), "lth-wandb")
    run_dir = os.path.abspath(run_dir)
    breaker = wandb_breaker.breaker_path(run_dir, uuid.uuid4().hex[:12]) if mode == "online" else None
    return TrackingSettings(mode=mode, project=project, entity=entity, dir=run_dir, breaker=breaker,
                            init_timeout=_init_timeout())


def _init_timeout() -> float:
    """$LTH_WANDB_INIT_TIMEOUT (seconds), else the default; a value that is not a positive
    number is named in a warning and the default used (tracking never stops a sweep)."""
    default = TrackingSettings.init_timeout
    text = os.environ.get("LTH_WANDB_INIT_TIMEOUT")
    if text is None:
        return default
    try:
        value = float(text)
        if not 0 < value < float("inf"):
            raise ValueError
        return value
    except ValueError:
        warnings.warn(f"LTH_WANDB_INIT_TIMEOUT: expected a positive number of seconds, got {text[:40]!r}; "
                      f"using {default:g}", stacklevel=3)
        return default


def wandb_parent_dir(store_local_dir: str | None) -> str:
    """Where W&B runs land (under <this>/wandb/): $LTH_WANDB_DIR, else the store's directory when
    it is local, else a temporary directory. Job runs and the analysis run alike, so that
    `wandb sync STORE/wandb` finds every run of a local store."""
    run_dir = os.environ.get("LTH_WANDB_DIR")
    if run_dir is None:
        run_dir = store_local_dir or os.path.join(tempfile.gettempdir(), "lth-wandb")
    return os.path.abspath(run_dir)


def job_config(job: Any, attempt: int) -> dict[str, Any]:
    """The W&B config of a job: the sweep coordinates first (for filtering), then the job spec."""
    meta = job.meta
    config: dict[str, Any] = {"job_id": job.id, "kind": job.kind, "attempt": attempt}
    if meta is not None:
        config.update(
            experiment=meta.experiment,
            role=meta.role,
            replicate=meta.replicate,
            rewind_iter=meta.rewind_iter,
            level=meta.level,
            data_seed=meta.data_seed,
            density=meta.density,
            retrain=meta.retrain,
            prune_strategy=meta.prune_strategy,
            parent_job_id=meta.parent_job_id,
            pair=list(meta.pair) if meta.pair else None,
        )
    config["job"] = dataclasses.asdict(job.spec)
    config["inputs"] = {role: list(src) for role, src in sorted(job.inputs.items())}
    return config


def run_name(job: Any, attempt: int = 1) -> str:
    """A W&B run name a person can read: r0-k50-L2-s1 (replicate, rewinding point, level, data
    seed), prefixed by the role when it is not a level of the IMP lineage (branch-, noise-; by
    the method, and ablation, for pruning at initialization; early_bird_p0.3- with the ticket's
    fraction), by the lineage when it is not IMP with weight rewinding (lr_rewind-, finetune-,
    random_prune-, reinit-: their levels have the same coordinates), then the job id's first 8
    characters, and `-a2` for a retry. The id makes the name unique in a W&B project, which the
    experiments of a store share (a fork's jobs have the same coordinates as the original's);
    a job shared by two experiments is one run with one name."""
    m = job.meta
    if m is None:
        name = f"{job.kind}-{job.id[:8]}"
    else:
        coords = f"r{m.replicate}-k{m.rewind_iter}-L{m.level}"
        if m.role != "pai":
            lineage = "random_prune" if m.prune_strategy == "random" else m.retrain
            if lineage not in ("rewind", None):
                coords = f"{lineage}-{coords}"
        if job.kind == "interpolate":
            name = f"interp-{coords}"
        else:
            name = f"{coords}-s{m.data_seed}"
            if m.role == "pai":  # pruning at init: the method, and its ablation (snip+shuffle-r0-k0-L2-s0)
                ablation = (m.retrain or "rewind").removeprefix("pai_")
                name = f"{m.prune_strategy}{'' if ablation == 'rewind' else '+' + ablation}-{name}"
            elif m.role == "early_bird" and m.retrain != "eb_search":  # one retrain per ticket fraction p
                name = f"early_bird_p{round(1.0 - m.density, 6):g}-{name}"
            elif m.role not in ("level", None):
                name = f"{m.role}-{name}"
        name = f"{name}-{job.id[:8]}"
    return name if attempt <= 1 else f"{name}-a{attempt}"


def run_tags(job: Any) -> list[str]:
    m = job.meta
    if m is None:
        return [job.kind]
    # each once: an interpolation's kind and role are both "interpolate"
    return list(dict.fromkeys(t for t in (job.kind, m.role, f"k{m.rewind_iter}", f"L{m.level}", m.retrain) if t))


def _settings(online_timeout: float | None) -> Any:
    import wandb

    # quiet and cheap: no console capture, no system stats sampler, no git/code scan
    return wandb.Settings(
        silent=True, console="off", disable_git=True, save_code=False, disable_job_creation=True,
        x_disable_stats=True, x_disable_machine_info=True,
        **({"init_timeout": online_timeout} if online_timeout is not None else {}),
    )


def init_run(settings: TrackingSettings, id_prefix: str, offline: bool = False, **init_kwargs: Any) -> tuple[Any, str | None]:
    """wandb.init under the sweep's breaker (wandb_breaker.py), for a job's run and the
    experiment's run alike: offline once the breaker is open (or `offline`); online with the
    settings' init timeout, and an online start that fails opens the breaker and starts offline.
    Returns (the run, None), or (the run, note) when this start fell back: note is what to say
    ("" when another process opened the breaker first and has said it). An offline start's
    error is raised. The run id is `id_prefix` and 32 random bits, drawn per start: W&B keeps
    the id of a start that failed as in use."""
    import wandb

    os.makedirs(settings.dir, exist_ok=True)
    online = settings.mode == "online" and not offline and not wandb_breaker.is_tripped(settings.breaker)
    mode = "online" if online else ("offline" if settings.mode == "online" else settings.mode)
    common = dict(project=settings.project, entity=settings.entity, dir=settings.dir, reinit="create_new")
    try:
        return wandb.init(mode=mode, settings=_settings(settings.init_timeout if online else None),
                          id=f"{id_prefix}-{os.urandom(4).hex()}", **common, **init_kwargs), None
    except Exception as exc:  # noqa: BLE001 - an online failure sends the sweep offline
        if not online:
            raise
        reason = f"{type(exc).__name__}: {exc}"
    try:
        first = settings.breaker is None or wandb_breaker.trip(settings.breaker, reason)
    except OSError:  # the breaker cannot be written: this caller reports, as if it were the first
        first = True
    run = wandb.init(mode="offline", settings=_settings(None), id=f"{id_prefix}-{os.urandom(4).hex()}",
                     **common, **init_kwargs)
    return run, (f"W&B online failed ({reason})" if first else "")


class JobTracker:
    """The W&B run of one job attempt. Every method is safe to call when W&B is off or broken."""

    def __init__(self, settings: TrackingSettings, job: Any, attempt: int):
        self.settings = settings
        self.job = job
        self.attempt = attempt
        self.run = None
        self.problems: list[str] = []  # W&B errors, for the job's record: the driver shows them
        self._offline = False  # this attempt's online init failed

    def _warn(self, what: str, exc: BaseException) -> None:
        message = f"W&B {what} failed (the job goes on): {type(exc).__name__}: {exc}"
        self.problems.append(message)
        warnings.warn(f"job {self.job.id}: {message}", stacklevel=3)

    def start(self) -> None:
        if self.settings.mode == "disabled":
            return
        try:
            meta = self.job.meta
            self.run, note = init_run(
                self.settings,
                offline=self._offline,
                group=meta.experiment if meta else None,
                job_type=meta.role if meta else self.job.kind,
                name=run_name(self.job, self.attempt),
                tags=run_tags(self.job),
                id_prefix=self.job.id,  # one W&B run per attempt
                config=job_config(self.job, self.attempt),
            )
        except Exception as exc:  # noqa: BLE001 - tracking must never fail a job
            self._warn("init", exc)
            self.run = None
            return
        if note is not None:
            self._offline = True
            if note:
                message = f"{note}: this job and every later one of the sweep log offline; upload later with `wandb sync`"
                self.problems.append(message)
                warnings.warn(f"job {self.job.id}: {message}", stacklevel=2)

    def log_metric(self, row: MetricRow) -> None:
        if self.run is None:
            return
        try:
            self.run.log(
                {f"{row.split}/loss": row.loss, f"{row.split}/accuracy": row.accuracy}, step=int(row.iteration)
            )
        except Exception as exc:  # noqa: BLE001
            self._warn("log", exc)

    def log_interpolation(self, rows: list[dict[str, Any]], instability: list[dict[str, Any]]) -> None:
        """The interpolation path: error and loss along alpha (one step per alpha, per split, so
        W&B draws the curve), the path as a table, and each split's barrier in the summary."""
        if self.run is None:
            return
        try:
            import wandb

            alphas = sorted({r["alpha"] for r in rows})
            # W&B draws the path against alpha, not against the step index
            self.run.define_metric("alpha")
            for split in sorted({r["split"] for r in rows}):
                for key in ("error", "loss"):
                    self.run.define_metric(f"{split}/{key}", step_metric="alpha")
            for step, alpha in enumerate(alphas):
                point: dict[str, Any] = {"alpha": alpha}
                for r in rows:
                    if r["alpha"] == alpha:
                        point[f"{r['split']}/error"] = r["error"]
                        point[f"{r['split']}/loss"] = r["loss"]
                self.run.log(point, step=step)
            columns = ["split", "alpha", "error", "loss"]
            self.run.log({"interpolation": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])},
                         step=len(alphas) - 1)
            for inst in instability:
                # percentage points, as the report and the console give the barrier
                self.run.summary[f"{inst['split']}/barrier_pp"] = 100.0 * inst["barrier"]
                self.run.summary[f"{inst['split']}/max_error"] = inst["max_error"]
        except Exception as exc:  # noqa: BLE001
            self._warn("log", exc)

    def finish(self, summary: dict[str, Any] | None = None, failed: bool = False) -> None:
        if self.run is None:
            return
        try:
            if summary:
                self.run.summary.update(summary)
            self.run.finish(exit_code=1 if failed else 0)
        except Exception as exc:  # noqa: BLE001
            self._warn("finish", exc)
        finally:
            self.run = None
