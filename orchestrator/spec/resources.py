"""Where and how jobs run, none of it part of a job's identity: resources (Ray, packing, ranks),
scheduler (retries, order, checkpoints) and tracking (W&B).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from orchestrator import limits as L
from orchestrator.spec.base import SpecError, _at_most, _Model


# resources.pack: auto. Models whose step on a GPU is a few hundred tiny kernels (CIFAR-sized
# and smaller), and how many of them one process trains as one stacked network. The shipped
# CIFAR configs give each actor a whole GPU (gpus: 1) and fill it with one large pack, rather
# than time-sharing a GPU between processes (a fraction: one CUDA context, memory pool and graph
# pool per process, no MPS); the benchmark's K = 32 row is that configuration (BENCHMARKS.md).
SMALL_MODELS = ("mlp_", "cifar_")
AUTO_PACK = 32


class ResourcesSpec(_Model):
    """Per job (Ray resources); a fractional gpus packs small jobs onto one GPU."""

    gpus: float = Field(0, ge=0, le=L.MAX_RESOURCE, description='GPUs per job (Ray resource); a fraction shares one GPU between worker processes, each with its own CUDA context (time-shared, no MPS): for small models prefer 1 with a larger pack' + _at_most(L.MAX_RESOURCE))
    cpus: float = Field(1, ge=0, le=L.MAX_RESOURCE, description='CPUs per job (Ray resource)' + _at_most(L.MAX_RESOURCE))
    memory_gb: float | None = Field(None, gt=0, le=L.MAX_RESOURCE, description='host memory per job in GB (Ray resource); null: not reserved' + _at_most(L.MAX_RESOURCE))
    pack: Union[Annotated[int, Field(ge=1, le=L.MAX_PACK)], Literal["auto"]] = Field(
        "auto",
        description="at most this many train jobs run together in one worker call (trainers.packed."
        "train_packed): ready jobs with the same TrainConfig, start and end iterations and learning-rate "
        "schedule (children of one branch point, the same level of several lineages); the pack shares "
        "this job's gpus/cpus. 1: every job alone. auto: AUTO_PACK on a GPU for a small model "
        "(SMALL_MODELS), else 1. Results are those of one-by-one training (bitwise with pack_strategy "
        "sequential, up to float rounding stacked)" + _at_most(L.MAX_PACK),
    )
    ranks: int | None = Field(
        None, ge=1, le=L.MAX_RANKS,
        description="CPU ranks of one job (torch.distributed over gloo) when gpus is 0; with gpus > 1 the "
        "ranks are the GPUs (one each) and this may be left out. Runtime, not identity: results equal "
        "one rank's up to float rounding (docs/design.md, Jobs on N ranks)" + _at_most(L.MAX_RANKS),
    )
    placement: Literal["same_node", "spread"] = Field(
        "same_node",
        description="where a job's ranks go (one Ray placement group, reserved at once): same_node (all "
        "on one node: NVLink, no network between ranks) or spread (several nodes allowed)",
    )
    pack_strategy: Literal["auto", "stacked", "sequential"] = Field(
        "auto",
        description="how a pack trains: stacked (the K networks as one network: grouped convolutions, "
        "fewer and larger kernels, the win for small models on a GPU), sequential (one after the other "
        "in the same worker, sharing its data cache), auto (stacked on CUDA, sequential on CPU)",
    )

    @field_validator("pack", mode="before")
    @classmethod
    def _pack_value(cls, v: Any) -> Any:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= L.MAX_PACK):
            return v
        raise ValueError(f"must be at least 1 or auto (a number at most {L.MAX_PACK:,}), got {L.echo(v)}")

    @model_validator(mode="after")
    def _whole_gpus(self) -> "ResourcesSpec":
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise SpecError("resources.gpus", f"more than one GPU must be a whole number, got {self.gpus}")
        if self.ranks is not None and self.ranks > 1 and self.gpus > 0 and self.ranks != self.gpus:
            raise SpecError("resources.ranks", f"{self.ranks} ranks with gpus: {self.gpus}: a rank takes one GPU, "
                                               "so give gpus: N (and no ranks), or gpus: 0 and ranks: N for CPU ranks")
        if self.world_size() > 1 and self.pack not in ("auto", 1):
            raise SpecError("resources.pack", f"a job on {self.world_size()} ranks runs alone (pack: 1), got {self.pack}")
        return self

    def world_size(self) -> int:
        """Ranks of one train job: N GPUs, or `ranks` CPU processes; 1 for a job on one device."""
        if self.gpus > 1:
            return int(self.gpus)
        return self.ranks or 1


class SchedulerSpec(_Model):
    max_attempts: int = Field(3, ge=1, le=L.MAX_ATTEMPTS, description='attempts per job before it counts as failed (a retry resumes from its checkpoint)' + _at_most(L.MAX_ATTEMPTS))
    priority: Literal["longest_path", "breadth_first"] = Field("longest_path", description='which ready job starts first: longest_path (the critical path) or breadth_first')
    checkpoint_every_iters: int = Field(0, ge=0, le=L.MAX_ITERATIONS, description='in-job checkpoint interval in iterations; 0: by time only' + _at_most(L.MAX_ITERATIONS))
    checkpoint_every_seconds: float = Field(300.0, gt=0, le=L.MAX_SECONDS, description='in-job checkpoint interval in seconds' + _at_most(L.MAX_SECONDS))
    max_workers: int | None = Field(None, ge=1, le=L.MAX_WORKERS, description='at most this many jobs at once; null: as many as the cluster fits' + _at_most(L.MAX_WORKERS))
    gang_timeout_seconds: float = Field(
        1800.0, gt=0, le=L.MAX_SECONDS,
        description="a job on several ranks that makes no progress for this long (a dead or hung rank, a stuck "
        "collective) is stopped and costs one attempt: the process-group timeout and the driver's watchdog"
        + _at_most(L.MAX_SECONDS),
    )


class TrackingSpec(_Model):
    wandb: Literal["offline", "online", "disabled"] = Field("offline", description='Weights & Biases: offline (runs on disk for wandb sync), online or disabled')
    project: str = Field("lth-sweep", min_length=1, description='W&B project')
    entity: str | None = Field(None, description='W&B entity (user or team); null: the default of the API key')
