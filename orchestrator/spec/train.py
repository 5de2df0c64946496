"""The train section: length, batch, optimizer, learning-rate schedule and the arithmetic of a step.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from orchestrator import limits as L
from orchestrator.spec.base import SpecError, _at_most, _at_most_one, _Model
from trainers.jobs import OptimizerConfig, ScheduleConfig


class OptimizerSpec(_Model):
    name: Literal["sgd", "adam"] = Field("sgd", description='optimizer: sgd or adam')
    lr: float = Field(0.1, gt=0, description='peak learning rate (before warmup and decay)')
    momentum: float = Field(0.9, ge=0, lt=1, description='SGD momentum')
    nesterov: bool = Field(False, description='SGD with Nesterov momentum')
    weight_decay: float = Field(0.0, ge=0, description='L2 weight decay coefficient')
    decay_norm_and_bias: bool = Field(True, description='false: no weight decay on BatchNorm parameters and biases')
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2, description="Adam's (beta1, beta2)")

    def to_config(self) -> OptimizerConfig:
        d = self.model_dump()
        d["betas"] = tuple(d["betas"])
        return OptimizerConfig(**d)


class ScheduleSpec(_Model):
    name: Literal["constant", "step", "cosine"] = Field("constant", description='learning-rate schedule: constant, step (x gamma at each milestone) or cosine (to min_lr at the last iteration)')
    milestones: list[int] | None = Field(None, description='step schedule: iterations at which the learning rate is multiplied by gamma')
    milestones_epochs: list[float] | None = Field(None, description='step schedule: milestones in epochs (resolved into milestones; give one of the two)')
    gamma: float = Field(0.1, gt=0, description='step schedule: factor applied at each milestone')
    warmup_iters: int | None = Field(None, ge=0, le=L.MAX_ITERATIONS, description='linear warmup length in iterations (resolved: 0 when absent)' + _at_most(L.MAX_ITERATIONS))
    warmup_epochs: float | None = Field(None, ge=0, description='warmup length in epochs (resolved into warmup_iters; give one of the two)')
    min_lr: float = Field(0.0, ge=0, description='cosine schedule: learning rate at the last iteration')

    @model_validator(mode="after")
    def _one_of_each(self) -> "ScheduleSpec":
        _at_most_one(self, "milestones", "milestones_epochs", where="train.schedule")
        _at_most_one(self, "warmup_iters", "warmup_epochs", where="train.schedule")
        if self.name != "step" and (self.milestones or self.milestones_epochs):
            raise SpecError("train.schedule.milestones", f"milestones only apply to the step schedule, not {self.name!r}")
        return self

    def to_config(self) -> ScheduleConfig:
        return ScheduleConfig(
            name=self.name,
            milestones=tuple(self.milestones or ()),
            gamma=self.gamma,
            warmup_iters=self.warmup_iters or 0,
            min_lr=self.min_lr,
        )


class TrainSpec(_Model):
    iterations: int | None = Field(None, gt=0, le=L.MAX_ITERATIONS, description='training length T in iterations (SGD steps); give this or epochs' + _at_most(L.MAX_ITERATIONS))
    epochs: float | None = Field(None, gt=0, description='training length in epochs (resolved into iterations: epochs x ceil(num_train / batch_size), rounded; at most ' + f'{L.MAX_ITERATIONS:,} iterations)')
    batch_size: int = Field(128, gt=0, le=L.MAX_BATCH_SIZE, description='examples per iteration' + _at_most(L.MAX_BATCH_SIZE))
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description='the optimizer')
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec, description='the learning-rate schedule, a function of the iteration')
    label_smoothing: float = Field(0.0, ge=0, lt=1, description='label smoothing of the cross-entropy loss (fraction)')
    eval_every: int | None = Field(None, ge=0, le=L.MAX_ITERATIONS, description='iterations between evaluations written to the metrics table; 0: only at the start and the end' + _at_most(L.MAX_ITERATIONS))
    eval_every_epochs: float | None = Field(None, ge=0, description='evaluation interval in epochs (resolved into eval_every; give one of the two)')
    eval_train_examples: int = Field(1024, gt=0, le=L.MAX_EXAMPLES, description='size of the fixed training subset on which train loss and accuracy are measured' + _at_most(L.MAX_EXAMPLES))
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description='arithmetic: fp32, bf16 (autocast) or auto (bf16 on CUDA, fp32 on CPU)')
    channels_last: bool = Field(True, description='channels-last memory layout for convolutions (CUDA only)')
    compile: bool | Literal["auto"] = Field("auto", description='torch.compile the model (CUDA only); auto: trainers.compiling.COMPILE_BY_DEFAULT[model] (pending GPU measurement: eager for every model today)')
    cuda_graphs: bool = Field(
        False,
        description="capture each training step (forward, backward, masks, fused optimizer) as one CUDA "
        "graph and replay it: one launch per step instead of hundreds, the win for small models; CUDA only",
    )
    deterministic: bool = Field(
        True,
        description="deterministic GPU kernels (cuDNN/cuBLAS, no autotuning): a job run twice gives the same "
        "bits, so branch children differ only in data order; false trades that for speed",
    )
    bn_sync: Literal["global", "per_replica"] = Field(
        "global",
        description="BatchNorm of a job on several ranks: global (statistics of the whole global batch, "
        "SyncBatchNorm: the same mathematics for every number of ranks) or per_replica (each rank's "
        "slice of bn_batch examples: then the ranks are batch_size / bn_batch); part of the job id",
    )
    bn_batch: int | None = Field(
        None, gt=0, le=L.MAX_BATCH_SIZE,
        description="bn_sync per_replica: examples per rank that BatchNorm normalises over (required "
        "there; resources must give batch_size / bn_batch ranks); part of the job id" + _at_most(L.MAX_BATCH_SIZE),
    )
    l1_gamma: float = Field(
        0.0,
        ge=0,
        description="network slimming's sparsity penalty on BatchNorm scales (Liu et al. 2017): "
        "l1_gamma * sign(gamma) added to their gradients after backward, in every train job (part of the job id); "
        "0: off. Needs a model with BatchNorm",
    )

    @model_validator(mode="after")
    def _length(self) -> "TrainSpec":
        if (self.iterations is None) == (self.epochs is None):
            raise SpecError("train.iterations", "give exactly one of train.iterations and train.epochs")
        _at_most_one(self, "eval_every", "eval_every_epochs", where="train")
        return self
