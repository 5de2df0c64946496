"""The experiment spec: one YAML file, validated into typed objects.

`load_spec(path, overrides)` reads the YAML, applies `--set a.b.c=VALUE` overrides, validates
everything that can be checked without touching the data (`check_data` does that, for
`lth run` only), and resolves epochs into iterations, so the returned spec is the exact,
iteration-based description of the sweep (`spec.model_dump()` is what reports and W&B
record; validating that dump again gives the same spec).

Every problem is a `SpecError` naming the field as a dotted path ("sweep.rewind_iters[1]").
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from orchestrator import limits as L
from orchestrator.bounded_yaml import BoundedLoader
from trainers.compiling import compile_by_default
from trainers.graph_rules import cuda_graphs_problem
from trainers.data.catalog import DESCRIPTIONS
from trainers.model_catalog import model_names
from trainers.jobs import DataConfig, OptimizerConfig, PruneConfig, ScheduleConfig, TrainConfig


class SpecError(Exception):
    """A bad experiment spec: `field` is the dotted path of what is wrong, `reason` why."""

    def __init__(self, field: str, reason: str, others: Sequence[tuple[str, str]] = ()) -> None:
        self.field = field
        self.reason = reason
        self.others = list(others)  # further (field, reason) problems found at the same time
        super().__init__(str(self))

    def __str__(self) -> str:
        # clip: a message stays readable whatever the input (each value it echoes is cut already)
        lines = [L.clip(f"{self.field}: {self.reason}")]
        lines += [L.clip(f"{f}: {r}") for f, r in self.others[:20]]
        if len(self.others) > 20:
            lines.append(f"... and {len(self.others) - 20} more problems")
        return "\n".join(lines)


# strict: a YAML string is not silently a number, a float not silently an int.
# allow_inf_nan=False: .inf or .nan in a float field is bad input, named like any other.
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
# resources.pack: auto. Models whose step on a GPU is a few hundred tiny kernels (CIFAR-sized
# and smaller), and how many of them one process trains as one stacked network. The shipped
# CIFAR configs give each actor a whole GPU (gpus: 1) and fill it with one large pack, rather
# than time-sharing a GPU between processes (a fraction: one CUDA context, memory pool and graph
# pool per process, no MPS); the benchmark's K = 32 row is that configuration (BENCHMARKS.md).
SMALL_MODELS = ("mlp_", "cifar_")
AUTO_PACK = 32


class _Model(BaseModel):
    model_config = _STRICT


def _at_most(n: float) -> str:
    return f"; at most {n:,}"


# A seed: within int64 (orchestrator/limits.py says why).
Seed = Annotated[int, Field(ge=L.MIN_SEED, le=L.MAX_SEED)]
_SEED_RANGE = "; an integer from -2^63 to 2^63 - 1"


class DataSpec(_Model):
    name: str = Field("digits", description=f"data set: one of {', '.join(DESCRIPTIONS)} (trainers/data/catalog.py)")
    root: str | None = Field(None, description='directory holding the data: cifar-10-batches-py/, an ImageFolder tree, or train.beton/test.beton (ffcv_*); unused by digits and synthetic')
    image_size: int | None = Field(None, gt=0, le=L.MAX_IMAGE_SIDE, description='image side in pixels: synthetic images; imagenet/ffcv_imagenet crop side (training too, unless min_res is set)' + _at_most(L.MAX_IMAGE_SIDE))
    eval_image_size: int | None = Field(None, gt=0, le=L.MAX_IMAGE_SIDE, description='imagenet: pixels of the shorter side before the centre crop at evaluation (default image_size * 8/7)' + _at_most(L.MAX_IMAGE_SIDE))
    num_classes: int | None = Field(None, ge=2, le=L.MAX_CLASSES, description='number of classes: required by synthetic; imagenet checks it against the folder' + _at_most(L.MAX_CLASSES))
    num_train: int | None = Field(None, gt=0, le=L.MAX_EXAMPLES, description='training examples: the size of synthetic data; elsewhere a fixed subset (seeded by data.seed); null: all' + _at_most(L.MAX_EXAMPLES))
    num_test: int | None = Field(None, gt=0, le=L.MAX_EXAMPLES, description='test examples, as num_train' + _at_most(L.MAX_EXAMPLES))
    channels: int = Field(3, gt=0, le=L.MAX_CHANNELS, description='image channels of synthetic data' + _at_most(L.MAX_CHANNELS))
    seed: Seed = Field(0, description='seed of the data set itself (synthetic generation, subsets), not of the data order' + _SEED_RANGE)
    augment: bool = Field(True, description="the data set's standard augmentation on training batches (CIFAR: pad-4 crop and flip)")
    # Progressive resizing (ImageNet-shaped data): training side from min_res to max_res over
    # epochs start_ramp_epoch..end_ramp_epoch (trainers/data/resolution.py checks the rest).
    min_res: int | None = Field(None, gt=0, le=L.MAX_IMAGE_SIDE, description='progressive resizing: training side in pixels up to start_ramp_epoch; null: train at image_size' + _at_most(L.MAX_IMAGE_SIDE))
    max_res: int | None = Field(None, gt=0, le=L.MAX_IMAGE_SIDE, description='progressive resizing: training side in pixels from end_ramp_epoch on' + _at_most(L.MAX_IMAGE_SIDE))
    start_ramp_epoch: int = Field(0, ge=0, le=L.MAX_EPOCHS, description='progressive resizing: epoch at which the side starts growing from min_res' + _at_most(L.MAX_EPOCHS))
    end_ramp_epoch: int = Field(0, ge=0, le=L.MAX_EPOCHS, description='progressive resizing: epoch at which the side reaches max_res' + _at_most(L.MAX_EPOCHS))

    def to_config(self) -> DataConfig:
        return DataConfig(**self.model_dump())


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


class ScoringSpec(_Model):
    examples_per_class: int = Field(10, ge=1, le=L.MAX_SCORING_EXAMPLES, description="snip, grasp, grasp_abs: the scoring batch holds examples_per_class x classes training examples (drawn along a data-order stream of its own, seeded by sweep.data_seed and k; augmented when data.augment), 10 as Synaptic-Flow and GraSP" + _at_most(L.MAX_SCORING_EXAMPLES))
    sample: Literal["class_balanced", "random"] = Field("class_balanced", description="snip, grasp, grasp_abs: which examples: class_balanced (examples_per_class of every class, the first met along the stream; GraSP's code) or random (the first examples_per_class x classes of the stream, whatever their classes: Synaptic-Flow's code, prune_dataset_ratio 10); part of the job id when random")
    bn_mode: Literal["eval", "train"] = Field("eval", description="snip, grasp, grasp_abs: BatchNorm while scoring: eval (running statistics, as Synaptic-Flow) or train (batch statistics, as the GraSP authors' code); synflow always scores in eval mode")


class GraspSpec(_Model):
    temperature: float = Field(200.0, gt=0, description="grasp, grasp_abs: the gradients are those of the loss of logits / temperature (Wang et al. 2020 use 200)")


class SynflowSpec(_Model):
    iterations: int = Field(100, ge=1, le=L.MAX_SYNFLOW_ROUNDS, description="synflow: rounds of scoring and pruning (Tanaka et al. 2020 use 100)" + _at_most(L.MAX_SYNFLOW_ROUNDS))
    schedule: Literal["exponential", "linear"] = Field("exponential", description="synflow: kept count after round r of n: exponential N * d^(r/n) (the paper's) or linear")


class AtInitSpec(_Model):
    methods: list[Literal["snip", "grasp", "grasp_abs", "synflow", "magnitude_init", "random_init"]] = Field(min_length=1, description="pruning-at-initialization methods, one lineage each at every IMP level's exact remaining count: snip (Lee et al. 2019), grasp (Wang et al. 2020; keeps the largest theta*Hg), grasp_abs (keeps the largest |theta*Hg|), synflow (Tanaka et al. 2020), magnitude_init (|W_k|), random_init (random scores)")
    scope: Literal["global", "layerwise"] = Field("global", description="rank scores over all prunable tensors at once (global: the papers' choice; the total equals IMP's remaining count) or per tensor (layerwise: each tensor keeps magnitude_layerwise's planned count)")
    at_iters: list[Annotated[int, Field(ge=0, le=L.MAX_ITERATIONS)]] = Field(default_factory=lambda: [0], min_length=1, max_length=L.MAX_REWIND_POINTS, description="score W_k for these k (iterations; each must be one of sweep.rewind_iters), then train k -> T as a level does" + _at_most(L.MAX_REWIND_POINTS) + " points")
    ablations: list[Literal["shuffle", "reinit", "invert"]] = Field(default_factory=list, description="Frankle et al. 2021's checks, one lineage per method each: shuffle (the method's mask shuffled within each layer), reinit (its mask, fresh weights), invert (keep the lowest scores at the same count)")
    scoring: ScoringSpec = Field(default_factory=ScoringSpec, description="the scoring batch of the data-dependent methods")
    grasp: GraspSpec = Field(default_factory=GraspSpec, description="GraSP's parameters")
    synflow: SynflowSpec = Field(default_factory=SynflowSpec, description="SynFlow's parameters")

    @model_validator(mode="after")
    def _lists(self) -> "AtInitSpec":
        _unique(self.methods, "pruning.at_init.methods")
        _unique(self.at_iters, "pruning.at_init.at_iters")
        _unique(self.ablations, "pruning.at_init.ablations")
        return self


class EarlyBirdSpec(_Model):
    kind: Literal["channel", "unstructured"] = Field("channel", description="early-bird masks: channel (BatchNorm scales of pruning.groups' channels, one global ranking; needs BatchNorm) or unstructured (global |w| of the prunable weights)")
    fractions: list[float] = Field(default_factory=lambda: [0.3, 0.5, 0.7], min_length=1, description="p of each detector (fraction of channels or weights its mask prunes); all run in one search")
    queue: int = Field(5, ge=2, le=L.MAX_EARLY_BIRD_QUEUE, description="masks in the detector's FIFO: the newest is compared with each older one" + _at_most(L.MAX_EARLY_BIRD_QUEUE))
    threshold: float = Field(0.1, gt=0, lt=1, description="a ticket is detected when the newest mask is within this normalised Hamming distance of every older mask in the queue (the reference code's rule)")
    stop: Literal["at_detection", "never"] = Field("at_detection", description="at_detection: the search stops once every fraction has fired; never: it trains to T and records every detection")
    retrain: list[Literal["continue", "reinit", "rewind"]] = Field(default_factory=lambda: ["continue", "reinit", "rewind"], min_length=1, description="retrain jobs per fraction: continue (weights and schedule from the detection point), reinit (fresh weights), rewind (W_k of the search, for each sweep rewinding point)")

    @model_validator(mode="after")
    def _lists(self) -> "EarlyBirdSpec":
        _unique(self.fractions, "pruning.early_bird.fractions")
        _unique(self.retrain, "pruning.early_bird.retrain")
        for i, p in enumerate(self.fractions):
            if not 0 < p < 1:
                raise SpecError(f"pruning.early_bird.fractions[{i}]", f"must be in (0, 1), got {p}")
        return self


class HRankSpec(_Model):
    batches: int = Field(5, ge=1, le=L.MAX_BN_BATCHES, description="channel_score hrank: training batches whose images the feature-map ranks are averaged over (HRank's rank_generation.py: --limit 5)" + _at_most(L.MAX_BN_BATCHES))
    batch_size: int = Field(128, gt=0, le=L.MAX_BATCH_SIZE, description="channel_score hrank: images per batch (HRank's train batch size 128)" + _at_most(L.MAX_BATCH_SIZE))


class PruningSpec(_Model):
    strategy: Literal["magnitude_global", "magnitude_layerwise"] = Field("magnitude_global", description='magnitude pruning over all prunable tensors at once (global) or per tensor (layerwise)')
    fraction: float = Field(0.2, gt=0, lt=1, description='fraction of the remaining prunable weights removed at each level')
    levels: int = Field(8, ge=0, le=L.MAX_LEVELS, description='pruning levels after the dense run: density (1 - fraction)^levels at the last one' + _at_most(L.MAX_LEVELS))
    ignore: list[str] = Field(default_factory=list, description='parameter names (fnmatch patterns) never pruned, e.g. fc.weight for the output layer')
    retrain: list[Literal["rewind", "lr_rewind", "finetune"]] = Field(default_factory=lambda: ["rewind"], min_length=1, description='retrain modes, one lineage each: rewind (weights to W_k), lr_rewind (schedule only), finetune (fixed small lr)')
    finetune_lr: float | None = Field(None, gt=0, description="learning rate of the finetune retrain mode (resolved: the schedule's rate at the last training iteration, as Renda et al. 2020 fine-tune at the final learning rate)")
    controls: list[Literal["random_prune", "random_reinit", "random_reinit_signs"]] = Field(default_factory=list, description="control lineages: random_prune (shuffled mask, same per-layer counts), random_reinit (IMP's mask, fresh weights), random_reinit_signs (IMP's mask, fresh magnitudes with the signs of W_k; Zhou et al. 2019)")
    criterion: Literal["magnitude", "magnitude_increase"] = Field("magnitude", description="which trained weights a level keeps (Zhou et al. 2019): magnitude (the largest |w_T|, the original IMP) or magnitude_increase (the largest |w_T| - |w_k|)")
    at_init: AtInitSpec | None = Field(None, description="pruning at initialization, scored on W_k at IMP's exact counts (absent: none)")
    granularity: Literal["weight", "channel"] = Field(
        "weight",
        description="what a level removes: weight (unstructured magnitude pruning) or channel (whole "
        "convolution channels: filter, bias, BatchNorm scale and shift, the next layer's input slice; "
        "fraction is then of the remaining channels, and strategy magnitude_global ranks channels over all "
        "groups, magnitude_layerwise within each)",
    )
    channel_score: Literal["l1_filter", "bn_gamma", "hrank"] = Field(
        "l1_filter",
        description="granularity channel: l1_filter (L1 norm of the filter, Li et al. 2017), bn_gamma "
        "(|BatchNorm scale|, network slimming; train with train.l1_gamma > 0) or hrank (average matrix rank "
        "of the channel's feature maps over pruning.hrank's training batches, Lin et al. 2020)",
    )
    hrank: HRankSpec = Field(default_factory=HRankSpec, description="channel_score hrank: the images the feature-map ranks are averaged over")
    groups: Literal["block_internal", "coupled"] = Field(
        "block_internal",
        description="granularity channel: block_internal (channels inside residual blocks and of plain "
        "conv layers) or coupled (also the channels meeting at residual adds, one group per stage; needs "
        "the torch-pruning package)",
    )
    layer_fractions: dict[str, Annotated[float, Field(gt=0, lt=1)]] = Field(
        default_factory=dict,
        description="strategy magnitude_layerwise: a tensor's own fraction per level, by parameter-name pattern "
        "(fnmatch; the first match wins, in the order written), e.g. {fc.weight: 0.1} for Frankle & Carbin's "
        "LeNet output layer at half the hidden layers' 20%; unmatched tensors prune at pruning.fraction",
    )
    early_bird: EarlyBirdSpec | None = Field(
        None,
        description="early-bird tickets (You et al. 2020): a search job per replicate trains the dense network "
        "(with train.l1_gamma) and detects, per fraction, when the mask stops changing; retrain jobs per "
        "(fraction, mode) are planned from the search's id. null: none",
    )

    @model_validator(mode="after")
    def _lists(self) -> "PruningSpec":
        _unique(self.retrain, "pruning.retrain")
        _unique(self.controls, "pruning.controls")
        if self.controls and "rewind" not in self.retrain:
            raise SpecError(
                "pruning.controls",
                "the controls are variants of the rewind lineage (random_reinit reuses its masks): "
                "add 'rewind' to pruning.retrain",
            )
        if self.layer_fractions:
            if self.strategy != "magnitude_layerwise" or self.granularity != "weight":
                raise SpecError("pruning.layer_fractions", "per-layer fractions need strategy magnitude_layerwise "
                                                           "and granularity weight (a global ranking has one rate)")
            if self.at_init is not None or self.early_bird is not None:
                raise SpecError("pruning.layer_fractions", "per-layer fractions are for IMP's levels: not combined with "
                                                           "pruning.at_init or pruning.early_bird")
        return self

    def to_config(self, strategy: str | None = None) -> PruneConfig:
        # hrank's images are part of a job only when hrank reads them (elsewhere: the defaults, out of the id)
        ranks = {"rank_batches": self.hrank.batches, "rank_batch_size": self.hrank.batch_size} if self.channel_score == "hrank" else {}
        return PruneConfig(strategy=strategy or self.strategy, fraction=self.fraction, ignore=tuple(self.ignore),
                           criterion=self.criterion, granularity=self.granularity,
                           channel_score=self.channel_score, groups=self.groups, **ranks,
                           layer_fractions=tuple((str(k), float(v)) for k, v in self.layer_fractions.items()))


class BranchSpec(_Model):
    seeds: list[Seed] = Field(default_factory=list, max_length=L.MAX_BRANCH_SEEDS, description='data-order seeds of the children made at each branch point (instability analysis); empty: no branches' + _at_most(L.MAX_BRANCH_SEEDS) + ' seeds')
    levels: Union[list[int], Literal["all"]] = Field("all", description='pruning levels at which to branch (0: dense), or all')
    # 31 in Frankle et al. 2020; each point is one evaluation per split, so 1001 (a step of
    # 0.001) is far beyond any resolution a barrier needs, and bounds a typo's cost.
    num_alphas: int = Field(31, ge=2, le=1001, description='evenly spaced interpolation points in [0, 1] on the path between two children (both ends included)' + _at_most(1001))
    splits: list[Literal["test", "train"]] = Field(default_factory=lambda: ["test", "train"], min_length=1, description='data on which the interpolation path is evaluated: test, train')
    train_examples: int = Field(10_000, gt=0, le=L.MAX_EXAMPLES, description='training examples used to evaluate the interpolation path on train' + _at_most(L.MAX_EXAMPLES))
    bn_reset: bool = Field(False, description='recompute BatchNorm statistics at each interpolated point before evaluating it')
    bn_reset_batches: int = Field(8, gt=0, le=L.MAX_BN_BATCHES, description='training batches used for each BatchNorm reset' + _at_most(L.MAX_BN_BATCHES))
    noise_floor: bool = Field(
        False,
        description="add at each branch point a pair of children with the first branch seed, both run with "
        "non-deterministic kernels: their barrier is what kernel noise alone produces, reported beside the "
        "data-order barrier (on a CPU the pair is identical and its barrier 0)",
    )

    @model_validator(mode="after")
    def _lists(self) -> "BranchSpec":
        _unique(self.seeds, "sweep.branch.seeds")
        if len(self.seeds) == 1 and not self.noise_floor:
            raise SpecError(
                "sweep.branch.seeds",
                f"one seed ({self.seeds[0]}) makes children that are never compared: instability compares them "
                "in pairs, so give at least two seeds (or none, for no branches)",
            )
        _unique(self.splits, "sweep.branch.splits")
        if self.levels != "all":
            _unique(self.levels, "sweep.branch.levels")
            for i, lev in enumerate(self.levels):
                if lev < 0:
                    raise SpecError(f"sweep.branch.levels[{i}]", f"a level is >= 0, got {lev}")
        return self


class SweepSpec(_Model):
    replicates: int | None = Field(None, ge=1, le=L.MAX_REPLICATES, description='number of initialisations (init seeds 0..n-1); give this or init_seeds' + _at_most(L.MAX_REPLICATES))
    init_seeds: list[Seed] | None = Field(None, min_length=1, max_length=L.MAX_REPLICATES, description='explicit init seeds, one replicate each (resolved from replicates when absent)' + _at_most(L.MAX_REPLICATES) + ' seeds')
    rewind_iters: list[Annotated[int, Field(le=L.MAX_ITERATIONS)]] | None = Field(None, min_length=1, max_length=L.MAX_REWIND_POINTS, description='rewinding points k in iterations (0: the original IMP); give this or rewind_epochs' + _at_most(L.MAX_REWIND_POINTS) + ' points')
    rewind_epochs: list[float] | None = Field(None, min_length=1, max_length=L.MAX_REWIND_POINTS, description='rewinding points in epochs (resolved into rewind_iters)' + _at_most(L.MAX_REWIND_POINTS) + ' points')
    data_seed: Seed = Field(0, description='data-order seed of the lineages (the dense run and every level)' + _SEED_RANGE)
    branch: BranchSpec = Field(default_factory=BranchSpec, description='branches and their linear interpolation (instability analysis)')

    @model_validator(mode="after")
    def _one_of_each(self) -> "SweepSpec":
        if (self.replicates is None) == (self.init_seeds is None):
            raise SpecError("sweep.replicates", "give exactly one of sweep.replicates and sweep.init_seeds")
        if (self.rewind_iters is None) == (self.rewind_epochs is None):
            raise SpecError("sweep.rewind_iters", "give exactly one of sweep.rewind_iters and sweep.rewind_epochs")
        if self.init_seeds is not None:
            _unique(self.init_seeds, "sweep.init_seeds")
        return self

    def seeds(self) -> list[int]:
        """The replicates' init seeds (a replicate is named by its init seed)."""
        return list(self.init_seeds) if self.init_seeds is not None else list(range(self.replicates or 0))


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


class TransferSpec(_Model):
    source: dict[str, Any] = Field(description="the source experiment whose tickets are taken: the path of its config file (relative to this one; read with its base chain) or its config inline. Its jobs are planned here with their own ids, so the ones in the store are reused and missing ones trained first")
    replicate: int = Field(0, ge=0, description="the source replicate (its init seed) whose tickets are taken")
    rewind_iter: int = Field(0, ge=0, le=L.MAX_ITERATIONS, description="the source's rewinding point k (iterations, one of its sweep.rewind_iters): a ticket is the source level's mask with the source's weights W_k (late resetting, Morcos et al. 2019)")
    levels: list[Annotated[int, Field(ge=1, le=L.MAX_LEVELS)]] = Field(min_length=1, max_length=L.MAX_LEVELS, description="the source's pruning levels whose tickets are transferred (each 1..its pruning.levels); each one a transfer job per replicate of this config")
    output_layer: Literal["auto", "source", "fresh", "dense"] = Field("auto", description="the output layer (fc), which cannot transfer when the class counts differ: source (the source's weights and mask; same class count only), fresh (this config's W0, masked at the source output layer's density), dense (this config's W0, unpruned); auto (the default): source when the class counts agree, else fresh")
    controls: list[Literal["random_mask", "fresh_weights"]] = Field(default_factory=list, description="controls at the ticket's per-layer counts: random_mask (the mask shuffled within each layer, the transferred weights), fresh_weights (the mask, this config's W0). The target's own IMP ticket is this config's own sweep (pruning, sweep), planned beside it")

    _source: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> "TransferSpec":
        _unique(self.levels, "transfer.levels")
        _unique(self.controls, "transfer.controls")
        if "transfer" in self.source:
            raise SpecError("transfer.source.transfer", "a source is an ordinary experiment: it cannot itself transfer tickets")
        try:
            src = validate_spec(self.source)
        except SpecError as e:
            raise SpecError(f"transfer.source.{e.field}", e.reason, [(f"transfer.source.{f}", r) for f, r in e.others]) from None
        if self.replicate not in src.init_seeds:
            raise SpecError("transfer.replicate", f"{self.replicate} is not a replicate of the source (its init seeds: {src.init_seeds})")
        if self.rewind_iter not in src.rewind_iters:
            raise SpecError("transfer.rewind_iter", f"{self.rewind_iter} is not a rewinding point of the source ({src.rewind_iters})")
        for i, lev in enumerate(self.levels):
            if lev > src.pruning.levels:
                raise SpecError(f"transfer.levels[{i}]", f"level {lev} is beyond the source's last level ({src.pruning.levels})")
        if "rewind" not in src.pruning.retrain or src.pruning.granularity != "weight":
            raise SpecError("transfer.source", "tickets are taken from the source's rewind lineage of weight pruning: "
                                               "its pruning.retrain must hold rewind and its pruning.granularity be weight")
        self._source = src
        return self

    @property
    def source_spec(self) -> "ExperimentSpec":
        return self._source


class ExperimentSpec(_Model):
    # a directory name in the store: not ".", "..", or hidden (a leading "." or "-")
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", max_length=L.MAX_NAME_LENGTH, description="experiment name: the key of the store's results and reports (letters, digits, _ . -; not starting with . or -)" + _at_most(L.MAX_NAME_LENGTH) + " characters")
    model: str = Field(description=f"network: one of {', '.join(model_names())} (trainers/models.py)")
    bn_scale_init: float | None = Field(
        None, gt=0,
        description="BatchNorm scales at initialisation: null keeps the model's own (U(0, 1) for the CIFAR "
        "ResNets and VGGs, open_lth's choice); a number fills every scale with it (0.5: network slimming, "
        "Liu et al. 2017, and the early-bird reference code, You et al. 2020). Part of the job id when set; "
        "needs a model with BatchNorm",
    )
    data: DataSpec = Field(default_factory=DataSpec, description='the data set')
    train: TrainSpec = Field(description='training hyperparameters, shared by every job')
    pruning: PruningSpec = Field(default_factory=PruningSpec, description='iterative magnitude pruning')
    sweep: SweepSpec = Field(description='the lottery-ticket axes: replicates, rewinding points, branches')
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description='per-job resources on the Ray cluster')
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec, description='retries, order and checkpoints of the jobs')
    store: str | None = Field(None, description='store directory or URL; --store and $LTH_STORE take precedence; null: ./lth-store')
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description='Weights & Biases tracking')
    references: list[str] = Field(default_factory=list, max_length=16, description='published results to put beside this experiment\'s: reference files (configs/references/*.yaml), paths relative to the config file; `lth run` keeps a copy in the store and `lth analyze` draws them and writes a verdict (changes nothing the jobs compute); at most 16')
    transfer: TransferSpec | None = Field(None, description="ticket transfer (Morcos et al. 2019): train another experiment's tickets with this config's data and recipe (absent: none)")

    _data_info: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve(self) -> "ExperimentSpec":
        """Cross-field checks, and epochs -> iterations (needs the data set's size)."""
        from trainers.data.catalog import valid_names
        from trainers.data.ondisk import describe

        models = model_names()
        if self.model not in models:
            raise SpecError("model", f"unknown model {L.echo(self.model)}; valid names: {', '.join(sorted(models))}")
        if self.data.name not in DESCRIPTIONS:
            raise SpecError("data.name", f"unknown data set {L.echo(self.data.name)}; valid names: {valid_names()}")
        try:
            info = describe(self.data.to_config())
        except (ValueError, KeyError, TypeError, OSError) as e:  # OSError: a data.root whose files are not the data set
            raise _data_error(e) from None
        self._data_info = info

        if info.num_train < self.train.batch_size:
            raise SpecError(
                "train.batch_size", f"{self.train.batch_size} is larger than the training set ({info.num_train} examples)"
            )
        # An epoch is ceil(N / B) iterations, as open_lth counts them (the last, partial batch is
        # a step): CIFAR-10 at batch 128 has 391, so 160 epochs are 62,560 iterations.
        per_epoch = -(-info.num_train // self.train.batch_size)

        def iters(epochs: float) -> int:
            return int(round(epochs * per_epoch))

        t, s, sw = self.train, self.train.schedule, self.sweep
        rewind_field = "sweep.rewind_epochs" if sw.rewind_epochs is not None else "sweep.rewind_iters"
        if t.epochs is not None:
            if iters(t.epochs) > L.MAX_ITERATIONS:
                raise SpecError("train.epochs", f"{t.epochs:g} epochs are {iters(t.epochs):,} iterations "
                                                f"({per_epoch:,} per epoch); at most {L.MAX_ITERATIONS:,}")
            t.iterations, t.epochs = iters(t.epochs), None
        if t.eval_every_epochs is not None:
            t.eval_every, t.eval_every_epochs = min(max(1, iters(t.eval_every_epochs)), L.MAX_ITERATIONS), None
        if t.eval_every is None:
            t.eval_every = 0
        if s.milestones_epochs is not None:
            s.milestones, s.milestones_epochs = [iters(e) for e in s.milestones_epochs], None
        if s.warmup_epochs is not None:
            s.warmup_iters, s.warmup_epochs = iters(s.warmup_epochs), None
        if s.warmup_iters is None:
            s.warmup_iters = 0
        if sw.rewind_epochs is not None:
            sw.rewind_iters, sw.rewind_epochs = [iters(e) for e in sw.rewind_epochs], None
        if sw.replicates is not None:
            sw.init_seeds, sw.replicates = list(range(sw.replicates)), None

        world = self.resources.world_size()
        if world > t.batch_size:  # each rank trains on its slice of the batch (trainers/data/bundle.py, Shard)
            raise SpecError("resources", f"{world} ranks for a batch of {t.batch_size} examples: a rank would "
                                         f"train on no example (at most train.batch_size ranks)")
        if t.bn_sync == "per_replica":
            if t.bn_batch is None:
                raise SpecError("train.bn_batch", "bn_sync per_replica needs the per-rank batch (bn_batch): it is part of the job")
            if t.bn_batch * world != t.batch_size:
                raise SpecError("resources", f"{world} ranks give {t.batch_size} / {world} examples per rank, but "
                                             f"train.bn_batch is {t.bn_batch} (bn_sync per_replica): the per-rank "
                                             f"batch is part of the job, so the ranks must be {t.batch_size / t.bn_batch:g}")
        elif t.bn_batch is not None:
            raise SpecError("train.bn_batch", "only bn_sync per_replica has a per-rank batch; leave bn_batch out")
        if world > 1 and t.cuda_graphs:
            raise SpecError("train.cuda_graphs", "a step captured as a CUDA graph cannot hold DDP's collectives: "
                                                 "cuda_graphs: false for jobs on several ranks")
        if t.cuda_graphs and self.resources.gpus == 0:
            # Caught here rather than by every job failing max_attempts times on a CPU worker.
            raise SpecError("train.cuda_graphs", "CUDA graphs need a GPU: give resources.gpus > 0, or cuda_graphs: false")
        if t.cuda_graphs:
            # auto compiles no model under a hand-captured graph (trainers/graph_rules.py)
            problem = cuda_graphs_problem(self.data.name, t.compile is True)
            if problem is not None:
                raise SpecError(*problem)
        T = t.iterations
        for i, m in enumerate(s.milestones or []):
            if not 0 < m <= T:
                raise SpecError(f"train.schedule.milestones[{i}]", f"{m} is outside training (1..{T} iterations)")
        if s.milestones and sorted(set(s.milestones)) != list(s.milestones):
            raise SpecError("train.schedule.milestones", f"must be strictly increasing, got {s.milestones}")
        if s.warmup_iters >= T:
            raise SpecError("train.schedule.warmup_iters", f"{s.warmup_iters} is not shorter than training ({T} iterations)")
        for i, k in enumerate(sw.rewind_iters):
            if not 0 <= k < T:
                raise SpecError(
                    f"{rewind_field}[{i}]",
                    f"rewinding point {k} (iterations) is outside training: it must satisfy 0 <= k < {T} (train.iterations)",
                )
        _unique(sw.rewind_iters, rewind_field)
        if self.pruning.finetune_lr is None:
            self.pruning.finetune_lr = final_lr(self)
        b = sw.branch
        if b.levels != "all":
            for i, lev in enumerate(b.levels):
                if lev > self.pruning.levels:
                    raise SpecError(
                        f"sweep.branch.levels[{i}]",
                        f"level {lev} is beyond the last pruning level ({self.pruning.levels}, pruning.levels)",
                    )
        a = self.pruning.at_init
        if a is not None:
            for i, k in enumerate(a.at_iters):
                if k not in sw.rewind_iters:
                    raise SpecError(
                        f"pruning.at_init.at_iters[{i}]",
                        f"{k} is not a rewinding point: W_k is saved only at sweep.rewind_iters ({sw.rewind_iters})",
                    )
            need = a.scoring.examples_per_class * int(info.num_classes)
            if need > info.num_train:
                raise SpecError("pruning.at_init.scoring.examples_per_class",
                                f"{a.scoring.examples_per_class} per class x {info.num_classes} classes = {need} "
                                f"examples, more than the training set holds ({info.num_train})")
        if self.pruning.channel_score == "hrank" and self.pruning.hrank.batch_size > info.num_train:
            raise SpecError("pruning.hrank.batch_size", f"{self.pruning.hrank.batch_size} images a batch, more than "
                                                        f"the training set holds ({info.num_train})")
        if b.seeds and "rewind" not in self.pruning.retrain:
            raise SpecError(
                "sweep.branch.seeds",
                "branches (instability analysis) are made on the rewind lineages: add 'rewind' to pruning.retrain",
            )
        if self.transfer is not None:
            self._check_transfer(info)
        return self

    def _check_transfer(self, info) -> None:
        tr, src = self.transfer, self.transfer.source_spec
        if src.model != self.model:
            raise SpecError("transfer.source.model", f"{L.echo(src.model)} is not this config's model ({L.echo(self.model)}): "
                                                     "a ticket moves between two copies of one network")
        same_classes = int(src.data_info.num_classes) == int(info.num_classes)
        if tr.output_layer == "source" and not same_classes:
            raise SpecError("transfer.output_layer", f"the source has {src.data_info.num_classes} classes, this config "
                                                     f"{info.num_classes}: its output layer cannot transfer (fresh or dense)")
        if tr.output_layer == "auto":
            tr.output_layer = "source" if same_classes else "fresh"
        if self.pruning.levels > 0 and (self.pruning.strategy, self.pruning.fraction) != (src.pruning.strategy, src.pruning.fraction):
            raise SpecError("pruning", f"this config's own IMP ticket (the transfer's control) must be pruned as the source "
                                       f"was ({src.pruning.strategy}, fraction {src.pruning.fraction}) so that level l has the "
                                       f"same density in both; or pruning.levels: 0 for no own ticket")

    # ---- resolved views -------------------------------------------------------------------

    @property
    def data_info(self):
        """trainers.data.DataInfo of the data set (input shape, classes, sizes)."""
        return self._data_info

    @property
    def iterations(self) -> int:
        return int(self.train.iterations)

    @property
    def init_seeds(self) -> list[int]:
        return self.sweep.seeds()

    @property
    def rewind_iters(self) -> list[int]:
        return list(self.sweep.rewind_iters or [])

    @property
    def branch_levels(self) -> list[int]:
        b = self.sweep.branch.levels
        levels = range(self.pruning.levels + 1) if b == "all" else b
        return sorted(levels) if self.sweep.branch.seeds else []

    def data_config(self) -> DataConfig:
        return self.data.to_config()

    def pack_size(self) -> int:
        """resources.pack resolved: `auto` packs AUTO_PACK sibling jobs of a small model on a GPU
        (one small network leaves a GPU mostly idle; BENCHMARKS.md), and nothing elsewhere."""
        pack = self.resources.pack
        if self.resources.world_size() > 1:
            return 1  # a gang runs alone
        if pack != "auto":
            return int(pack)
        small = self.model.startswith(SMALL_MODELS)
        return AUTO_PACK if small and self.resources.gpus > 0 else 1

    def train_config(self) -> TrainConfig:
        t = self.train
        return TrainConfig(
            model=self.model,
            data=self.data_config(),
            iterations=self.iterations,
            batch_size=t.batch_size,
            optimizer=t.optimizer.to_config(),
            schedule=t.schedule.to_config(),
            label_smoothing=t.label_smoothing,
            eval_every=t.eval_every or 0,
            eval_train_examples=t.eval_train_examples,
            precision=t.precision,
            channels_last=t.channels_last,
            compile=(not t.cuda_graphs and compile_by_default(self.model)) if t.compile == "auto" else t.compile,
            cuda_graphs=t.cuda_graphs,
            deterministic=t.deterministic,
            bn_sync=t.bn_sync,
            bn_batch=t.bn_batch,
            l1_gamma=t.l1_gamma,
            bn_scale_init=self.bn_scale_init,
        )

    def prune_config(self, strategy: str | None = None) -> PruneConfig:
        return self.pruning.to_config(strategy)

    def check_data(self) -> None:
        """The data is present and readable (for `lth run`; `lth plan` does not need it)."""
        from trainers.data.ondisk import check_available

        try:
            check_available(self.data_config())
        except (ValueError, OSError) as e:
            raise _data_error(e, unnamed="data.root") from None


# ---- helpers ------------------------------------------------------------------------------


def final_lr(spec: "ExperimentSpec") -> float:
    """The learning rate of the last training iteration (T - 1), the default fine-tuning rate
    (Renda, Frankle & Carbin, ICLR 2020: fine-tune at the final learning rate of training).
    Rounded to 12 significant digits so that 0.05 x 0.1 x 0.1 reads 0.0005, not 0.0005000000000000001."""
    from trainers.schedule import lr_at

    t = spec.train
    rate = lr_at(t.schedule.to_config(), t.optimizer.lr, int(t.iterations), int(t.iterations) - 1)
    return float(f"{rate:.12g}")


def _data_error(e: Exception, unnamed: str = "data") -> SpecError:
    """The data layer names the field at the start of its messages ("data.min_res: ..."): keep it;
    a message that names none is charged to `unnamed`."""
    text = str(e)
    m = re.match(r"(data\.[a-z_]+)(?::\s*|\s+)(.*)", text, re.S)
    return SpecError(m.group(1), m.group(2)) if m else SpecError(unnamed, text)


def _at_most_one(model: BaseModel, a: str, b: str, where: str) -> None:
    if getattr(model, a) is not None and getattr(model, b) is not None:
        raise SpecError(f"{where}.{b}", f"give at most one of {where}.{a} and {where}.{b}")


def _unique(values: Sequence[Any], field: str) -> None:
    seen = set()
    for i, v in enumerate(values):
        if v in seen:
            raise SpecError(f"{field}[{i}]", f"{L.echo(v)} appears twice")
        seen.add(v)


class _Loader(BoundedLoader):
    """SafeLoader, bounded in size and depth (bounded_yaml.py), that also reads `1e-4` as a float
    (YAML 1.1 wants `1.0e-4`) and refuses a key given twice in one mapping (PyYAML keeps the last
    silently: a sweep run with the wrong value)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` then overriding a merged key is how YAML anchors are used
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (list, dict)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {L.echo(key)} (first given on line {seen[key] + 1})", key_node.start_mark
                )
            if not isinstance(key, (list, dict)):
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _path_text(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not re.search(r"[\[\](]", part):  # drop union tags
            out += ("." if out else "") + part
    return out or "<root>"


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The spec model class that holds the field at `loc` (for listing valid keys)."""
    cls: Any = ExperimentSpec
    for part in loc[:-1]:
        if not isinstance(part, str):
            continue
        sub = _submodel(cls, part)
        if sub is None:
            return None
        cls = sub
    return cls


def _submodel(cls: Any, name: str) -> type[BaseModel] | None:
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or name not in cls.model_fields:
        return None
    ann = cls.model_fields[name].annotation
    for t in (ann, *get_args(ann)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _suggest_key(cls: type[BaseModel], name: object, at: str) -> str:
    """' (did you mean ...?)' for an unknown key `name` in model `cls` (at dotted path `at`): a
    close spelling at this level, else the field of that very name one or two levels down
    (`train.lr` -> `train.optimizer.lr`), else ''."""
    from orchestrator.suggest import did_you_mean

    close = did_you_mean(name, cls.model_fields)
    if close or not isinstance(name, str):
        return close
    below: list[str] = []
    for f in cls.model_fields:
        sub = _submodel(cls, f)
        if sub is None:
            continue
        if name in sub.model_fields:
            below.append(f"{f}.{name}")
        below += [f"{f}.{g}.{name}" for g in sub.model_fields if name in getattr(_submodel(sub, g), "model_fields", {})]
    if not below:
        return ""
    return f" (did you mean {' or '.join(repr(f'{at}.{b}' if at else b) for b in below[:3])}?)"


def _errors(e: ValidationError) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in e.errors():
        loc = err["loc"]
        field = _path_text(loc)
        if err["type"] == "extra_forbidden":
            holder = _model_at(loc)
            valid = f" (valid keys: {', '.join(holder.model_fields)})" if holder else ""
            reason = f"unknown key{_suggest_key(holder, loc[-1], _path_text(loc[:-1]) if loc[:-1] else '') if holder else ''}{valid}"
        elif err["type"] == "missing":
            reason = "required field is missing"
        else:
            reason = f"{err['msg']} (got {L.echo(err.get('input'))})"
            if err["type"].startswith(("int_", "float_")):  # the wrong type: say the range too
                reason += _bound_of(loc)
            if isinstance(err.get("input"), list) and "list" not in err["type"]:
                # A list where one value goes: someone trying to sweep a hyperparameter.
                reason += ("; a field takes one value per experiment: to compare values, run one "
                           "experiment per value (README: 'A hyperparameter axis')")
        if (field, reason) not in out:
            out.append((field, reason))
    return out


def _bound_of(loc: Sequence[Any]) -> str:
    """"; at most N" for a bounded integer field (the bound is in its description), so that a
    value refused for its type (1e18 is a float) still learns the range it must be in."""
    holder, name = _model_at(loc), loc[-1] if loc else None
    if holder is None or not isinstance(name, str) or name not in holder.model_fields:
        return ""
    at_most = re.search(r"; at most [0-9,.]+( [a-z]+)?", holder.model_fields[name].description or "")
    return at_most.group(0) if at_most else ""


def validate_spec(data: Any) -> ExperimentSpec:
    """A plain dict (parsed YAML) -> ExperimentSpec, or SpecError."""
    if not isinstance(data, dict):
        raise SpecError("<root>", f"an experiment spec is a mapping of keys to values, got {type(data).__name__}")
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as e:
        errs = _errors(e)
        raise SpecError(errs[0][0], errs[0][1], errs[1:]) from None


# ---- published reference results (configs/references/*.yaml) --------------------------------

# Our names for what a published number measures: the families of orchestrator/analysis/methods.py.
REFERENCE_FAMILIES = ("dense", "imp_rewind", "imp_lr_rewind", "imp_finetune", "random_prune", "random_reinit",
                      "random_reinit_signs", "snip", "grasp", "grasp_abs", "synflow", "magnitude_init",
                      "random_init")


class ReferenceRow(_Model):
    where: str = Field(min_length=1, description="the table or figure of the paper (or the file of its repository) the number is from")
    setting: str = Field(min_length=1, description="the setting in the paper's words (model, data set, method, density)")
    model: str = Field(min_length=1, description="the network as our model catalog names it when it is one of ours (cifar_vgg_16, cifar_resnet_20, ...), else the paper's name: only a row whose model equals the experiment's is comparable")
    dataset: str = Field(min_length=1, description="the data set as data.name names it (cifar10, cifar100, imagenet, ...)")
    family: Literal[REFERENCE_FAMILIES] = Field(description="what was measured, in the analysis's family names (imp_rewind: IMP with weight rewinding; snip, synflow, ...: pruning at initialization; dense: the unpruned network)")  # type: ignore[valid-type]
    rewind_iter: int = Field(0, ge=0, description="the rewinding point k (iterations) of our runs it compares with; 0: at initialization")
    granularity: Literal["weight", "channel"] = Field("weight", description="what density counts: weights or channels remaining")
    density: float = Field(gt=0, le=1, description="fraction of the weights (or channels) remaining, 1 for the dense network")
    metric: Literal["test_accuracy", "test_error"] = Field(description="top-1 test accuracy or test error, as the paper gives it")
    value: float = Field(ge=0, le=100, description="the published value, in percent")
    spread: float | None = Field(None, ge=0, le=100, description="the published standard deviation over n runs, in percentage points; null: none given")
    n: int | None = Field(None, ge=1, description="the number of runs the value is a mean of; null: not given")
    epochs: int | None = Field(None, ge=1, description="training epochs of the recipe behind the number, when known: a different number of epochs here makes the row not comparable")
    lr: float | None = Field(None, gt=0, description="the recipe's initial learning rate, when known: a different train.optimizer.lr makes the row not comparable")
    source: str = Field(min_length=1, description="where the number was read (class P/R/S and file or section, as in the research notes): never a number without its source")
    quote: str | None = Field(None, description="the text or extraction the number was read from")
    secondary: bool = Field(False, description="true when the source restates the paper (class S): the verdict says so")

    @model_validator(mode="after")
    def _spread(self) -> "ReferenceRow":
        # ValueError (not SpecError): pydantic then names the row, validate_reference the field
        if self.spread is not None and self.n is None:
            raise ValueError("n|a spread is a standard deviation over n runs: give n too")
        klass = self.source.strip()[:1]
        if self.secondary != (klass == "S"):
            raise ValueError(f"secondary|must be {str(klass == 'S').lower()} for a source of class {klass} "
                             "(the source's first letter: class S, and only it, restates the paper)")
        return self


class ReferenceFile(_Model):
    paper: str = Field(min_length=1, description="short name of the paper, as the report shows it")
    citation: str = Field(min_length=1, description="authors, title, venue, year")
    notes: str | None = Field(None, description="what the rows are and are not (recipe differences, what could not be confirmed)")
    rows: list[ReferenceRow] = Field(min_length=1, description="the published numbers")


def load_reference_file(path: str | Path) -> ReferenceFile:
    """A reference file, validated; SpecError naming the field (rows[2].source) otherwise."""
    path = Path(path)
    try:
        data = parse_yaml(path.read_text())
    except FileNotFoundError:
        raise SpecError(str(path), "no such reference file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(str(path), f"cannot read the reference file ({e})") from None
    except yaml.YAMLError as e:
        raise SpecError(str(path), f"invalid YAML: {e}") from None
    return validate_reference(data, str(path))


def validate_reference(data: Any, where: str = "reference file") -> ReferenceFile:
    if not isinstance(data, dict):
        raise SpecError(where, f"a reference file is a mapping (paper, citation, rows), got {type(data).__name__}")
    try:
        return ReferenceFile.model_validate(data)
    except ValidationError as e:
        errs = []
        for err in e.errors():
            field = _path_text(err["loc"])
            if err["type"] == "extra_forbidden":
                holder = ReferenceRow if "rows" in err["loc"] else ReferenceFile
                reason = f"unknown key (valid keys: {', '.join(holder.model_fields)})"
            elif err["type"] == "missing":
                reason = "required field is missing"
            elif err["type"] == "value_error" and "|" in str(err.get("ctx", {}).get("error", "")):
                name, _, reason = str(err["ctx"]["error"]).partition("|")
                field = f"{field}.{name}"
            else:
                reason = f"{err['msg']} (got {L.echo(err.get('input'))})"
            errs.append((field, reason))
        raise SpecError(f"{where}: {errs[0][0]}", errs[0][1], errs[1:]) from None


# ---- grids: one experiment per point of a product of values ---------------------------------

MAX_GRID_POINTS = 64
# The lottery-ticket axes are the sweep's own (an experiment grows along them); the rest say
# where and how jobs run, or are the experiment's identity: none of them is a grid axis.
GRID_REFUSED = ("name", "base", "grid", "references", "sweep", "pruning.levels", "pruning.retrain",
                "pruning.controls", "pruning.at_init", "pruning.early_bird", "resources", "scheduler",
                "tracking", "store")
_GRID_VALUE = re.compile(r"^[A-Za-z0-9_.-]+$")


def _grid_value_text(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else (repr(v) if isinstance(v, float) else str(v))


def expand_grid(data: dict) -> list[dict]:
    """A raw config with a `grid:` block (dotted field -> list of values) -> one raw config per
    point of the product, named `<name>-<field><value>...` by the last word of each field
    (`demo_lr-lr0.05`), in the order the block lists fields and values; without a grid, [data]."""
    import copy
    import itertools
    import json

    if "grid" not in data:
        return [data]
    grid = data.pop("grid")
    if not isinstance(grid, dict) or not grid:
        raise SpecError("grid", f"a mapping of dotted fields to lists of values, e.g. grid: {{train.optimizer.lr: "
                                f"[0.1, 0.05]}} (got {L.echo(grid)})")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError("name", "a grid needs the base name its experiments are named after")
    axes = []
    for key, values in grid.items():
        where = f"grid.{key}"
        if not isinstance(key, str) or any(key == r or key.startswith(r + ".") for r in GRID_REFUSED):
            raise SpecError(where, "not a grid axis: the lottery-ticket axes (sweep, pruning levels, retrain modes, "
                                   "controls, pruning at init) grow one experiment, and name, references and the "
                                   "runtime sections change nothing computed")
        if not isinstance(values, list) or not values:
            raise SpecError(where, f"a non-empty list of values (got {L.echo(values)})")
        texts = []
        for v in values:
            if isinstance(v, (dict, list)) or v is None:
                raise SpecError(where, f"each value is one number, string or boolean (got {L.echo(v)})")
            t = _grid_value_text(v)
            if not _GRID_VALUE.match(t):
                raise SpecError(where, f"the value {L.echo(v)} cannot be part of an experiment name (letters, "
                                       "digits, _ . - only)")
            texts.append(t)
        if len(set(texts)) != len(texts):
            raise SpecError(where, f"a value is listed twice ({', '.join(texts)})")
        axes.append((key, values))
    n = 1
    for _, values in axes:
        n *= len(values)
    if n > MAX_GRID_POINTS:
        raise SpecError("grid", f"{n} points; at most {MAX_GRID_POINTS} experiments per grid")
    words = [key.rsplit(".", 1)[-1] for key, _ in axes]
    out = []
    for point in itertools.product(*(values for _, values in axes)):
        d = copy.deepcopy(data)
        for (key, _), v in zip(axes, point):
            try:
                apply_override(d, f"{key}={json.dumps(v)}")
            except SpecError as e:
                raise SpecError(f"grid.{key}", e.reason.removeprefix("--set: ")) from None
        d["name"] = name + "".join(f"-{w}{_grid_value_text(v)}" for w, v in zip(words, point))
        out.append(d)
    return out


# ---- --set overrides ----------------------------------------------------------------------

_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")


def _parse_key(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for token in key.split("."):
        m = _TOKEN.match(token)
        if not m:
            raise SpecError(key, f"--set: {L.echo(token)} is not a config key (keys look like a.b.c or a.b[1])")
        parts.append(m.group(1))
        parts += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
    return parts


def apply_override(data: dict, override: str) -> None:
    """Apply one `a.b.c=VALUE` (VALUE parsed as YAML) to the raw spec dict, in place.

    The path is checked against the spec's schema, so `--set` can set a key the file leaves
    out (its default), but a misspelt key is an error rather than a silently ignored value.
    """
    if "=" not in override:
        raise SpecError(override, "--set expects KEY=VALUE, e.g. --set train.optimizer.lr=0.05")
    key, text = override.split("=", 1)
    key = key.strip()
    try:
        value = parse_yaml(text)
    except yaml.YAMLError as e:
        raise SpecError(key, f"--set: the value {L.echo(text)} is not valid YAML ({e})") from None
    parts = _parse_key(key)
    node: Any = data
    cls: Any = ExperimentSpec
    done: list[str | int] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = _path_text(done) if done else "the top level"
        if isinstance(part, str):
            if cls is None or not isinstance(node, dict):
                raise SpecError(key, f"--set: {_path_text(done)} has no sub-keys")
            if part not in cls.model_fields:
                raise SpecError(key, f"--set: unknown key {L.echo(part)} at {where}{_suggest_key(cls, part, _path_text(done) if done else '')} "
                                     f"(valid keys: {', '.join(cls.model_fields)})")
            # transfer.source holds a whole experiment config: its keys are checked as one
            sub = ExperimentSpec if (cls, part) == (TransferSpec, "source") else _submodel(cls, part)
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    if sub is None:
                        raise SpecError(key, f"--set: {_path_text(done + [part])} is not set in the file, cannot index it")
                    node[part] = {}
                node = node[part]
            cls = sub
        else:
            if not isinstance(node, list) or not 0 <= part < len(node):
                size = f"a list of {len(node)}" if isinstance(node, list) else "not a list"
                raise SpecError(key, f"--set: index [{part}] is out of range ({_path_text(done)} is {size})")
            if last:
                node[part] = value
            else:
                node = node[part]
            cls = None
        done.append(part)


def merge_configs(base: dict, over: dict) -> dict:
    """`over` on top of `base`: mappings merge key by key; any other value (a list too)
    replaces the base's, so a config can shorten a list it inherits."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_configs(out[key], value)
        else:
            out[key] = value
    return out


def _config_file_suggestion(path: Path) -> str:
    """' (did you mean ...?)' for a config path that does not exist: the same name with the other
    YAML suffix (demo.yml -> demo.yaml), else a close name among the folder's YAML files."""
    import difflib

    for other in (path.with_suffix(".yaml"), path.with_suffix(".yml")):
        if other != path and other.is_file():
            return f" (did you mean {str(other)!r}?)"
    try:
        names = [p.name for p in path.parent.iterdir() if p.suffix in (".yaml", ".yml")]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    return f" (did you mean {str(path.parent / close[0])!r}?)" if close else ""


def _read_config(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """One YAML file as a dict, with its `base:` chain (paths relative to the file) merged in."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(str(path), f"no such config file{_config_file_suggestion(path)}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise SpecError(str(path), f"cannot read the config file ({e})") from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as e:
        raise SpecError(str(path), f"invalid YAML: {e}") from None
    if data is None:
        raise SpecError(str(path), "the config file is empty")
    if not isinstance(data, dict):
        raise SpecError(str(path), f"an experiment spec is a mapping of keys to values, got {type(data).__name__}")
    refs = data.get("references")
    if isinstance(refs, list):  # relative to the file that names them, as `base:` is
        data["references"] = [str((path.parent / r).resolve()) if isinstance(r, str) and r else r for r in refs]
    _inline_source(path, data, chain)
    if "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str) or not base:
        raise SpecError("base", f"in {path}: the path of another config file, relative to this one (got {L.echo(base)})")
    base_path = (path.parent / base).resolve()
    if base_path in chain or base_path == path.resolve():
        cycle = " -> ".join(str(p) for p in (*chain, path.resolve(), base_path))
        raise SpecError("base", f"in {path}: configs form a cycle ({cycle})")
    if not base_path.is_file():
        raise SpecError("base", f"in {path}: no such config file {L.echo(str(base_path))}")
    return merge_configs(_read_config(base_path, (*chain, path.resolve())), data)


def _inline_source(path: Path, data: dict, chain: tuple[Path, ...]) -> None:
    """transfer.source given as a config file's path (relative to this file): its config, inlined."""
    transfer = data.get("transfer")
    source = transfer.get("source") if isinstance(transfer, dict) else None
    if not isinstance(source, str):
        return
    source_path = (path.parent / source).resolve()
    if source_path in chain or source_path == path.resolve():
        raise SpecError("transfer.source", f"in {path}: a config cannot be its own source")
    if not source_path.is_file():
        raise SpecError("transfer.source", f"in {path}: no such config file {L.echo(str(source_path))}")
    transfer["source"] = _read_config(source_path, (*chain, path.resolve()))


def load_raw(path: str, overrides: Sequence[str] = ()) -> dict:
    """The config as a plain dict: the file, its `base:` chain merged in, then `--set` overrides."""
    data = _read_config(Path(path))
    for override in overrides:
        apply_override(data, override)
    return data


def load_spec(path: str, overrides: Sequence[str] = ()) -> ExperimentSpec:
    """Read, merge its base, override, validate and resolve an experiment YAML file (and the
    reference files it names: a bad one is refused here, before anything runs)."""
    data = load_raw(path, overrides)
    if "grid" in data:
        raise SpecError("grid", f"{path} is a grid of experiments: load it with load_specs")
    return _checked(validate_spec(data))


def load_specs(path: str, overrides: Sequence[str] = ()) -> list[ExperimentSpec]:
    """One spec per point of the config's `grid:` (one spec without a grid), each validated
    and resolved; a bad point is refused naming its experiment."""
    out = []
    for data in expand_grid(load_raw(path, overrides)):
        try:
            out.append(_checked(validate_spec(data)))
        except SpecError as e:
            if "grid" not in load_raw(path, overrides):
                raise
            raise SpecError(e.field, f"{e.reason} (in grid point {data.get('name')})", e.others) from None
    return out


def _checked(spec: ExperimentSpec) -> ExperimentSpec:
    for i, ref in enumerate(spec.references):
        try:
            load_reference_file(ref)
        except SpecError as e:
            raise SpecError(f"references[{i}]", str(e)) from None
    return spec
