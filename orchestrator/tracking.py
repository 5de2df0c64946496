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
import netrc
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from trainers.jobs import MetricRow

WandbMode = Literal["online", "offline", "disabled"]


@dataclass(frozen=True)
class TrackingSettings:
    mode: WandbMode = "disabled"
    project: str = "lth-sweep"
    entity: str | None = None
    dir: str | None = None  # runs land in <dir>/wandb/ (a local path)


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_settings(
    mode: str, project: str, entity: str | None, store_local_dir: str | None
) -> TrackingSettings:
    """The settings a sweep's jobs log with. `store_local_dir`: the store's directory, if local."""
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"tracking.wandb: expected online, offline or disabled, got {mode!r}")
    if mode == "online" and not _has_api_key():
        warnings.warn(
            "tracking.wandb is online but no W&B API key is set (WANDB_API_KEY or `wandb login`): "
            "logging offline instead; upload later with `wandb sync`",
            stacklevel=2,
        )
        mode = "offline"
    run_dir = os.environ.get("LTH_WANDB_DIR")
    if run_dir is None:
        run_dir = store_local_dir or os.path.join(tempfile.gettempdir(), "lth-wandb")
    return TrackingSettings(mode=mode, project=project, entity=entity, dir=os.path.abspath(run_dir))


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


class JobTracker:
    """The W&B run of one job attempt. Every method is safe to call when W&B is off or broken."""

    def __init__(self, settings: TrackingSettings, job: Any, attempt: int):
        self.settings = settings
        self.job = job
        self.attempt = attempt
        self.run = None

    def _warn(self, what: str, exc: BaseException) -> None:
        warnings.warn(f"W&B {what} failed for job {self.job.id} (the job goes on): {exc!r}", stacklevel=3)

    def start(self) -> None:
        if self.settings.mode == "disabled":
            return
        try:
            import wandb

            os.makedirs(self.settings.dir, exist_ok=True)
            meta = self.job.meta
            self.run = wandb.init(
                mode=self.settings.mode,
                project=self.settings.project,
                entity=self.settings.entity,
                dir=self.settings.dir,
                group=meta.experiment if meta else None,
                job_type=meta.role if meta else self.job.kind,
                name=self.job.id,
                id=f"{self.job.id}-{os.urandom(4).hex()}",  # one W&B run per attempt
                config=job_config(self.job, self.attempt),
                reinit="create_new",
                # quiet and cheap: no console capture, no system stats sampler, no git/code scan
                settings=wandb.Settings(
                    silent=True,
                    console="off",
                    disable_git=True,
                    save_code=False,
                    disable_job_creation=True,
                    x_disable_stats=True,
                    x_disable_machine_info=True,
                ),
            )
        except Exception as exc:  # noqa: BLE001 - tracking must never fail a job
            self._warn("init", exc)
            self.run = None

    def log_metric(self, row: MetricRow) -> None:
        if self.run is None:
            return
        try:
            self.run.log(
                {f"{row.split}/loss": row.loss, f"{row.split}/accuracy": row.accuracy}, step=int(row.iteration)
            )
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
