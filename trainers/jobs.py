"""Job descriptions: the plain-data contract between the orchestrator and trainers/.

Everything that determines a job's output is a field of a frozen dataclass here, so the
orchestrator can hash a job (`dataclasses.asdict` + canonical JSON) into its id, and a job
can be shipped to any machine with a GPU and run as a plain function call
(`trainers.api.run_train_job`, `trainers.api.run_interpolate_job`).

Fields that do NOT change the result (where to checkpoint, how often, which device) live in
the `*Paths` objects and in `trainers.runtime.Runtime`, never here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

RetrainMode = Literal["rewind", "lr_rewind", "finetune"]
PruneStrategy = Literal["magnitude_global", "magnitude_layerwise", "random"]


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"  # key of trainers.data.catalog.DESCRIPTIONS
    root: str | None = None  # directory: cifar batches, ImageFolder, or train.beton/test.beton (ffcv_*)
    image_size: int | None = None  # synthetic: side; imagenet/ffcv_imagenet: crop side (training: unless min_res is set)
    eval_image_size: int | None = None  # imagenet: shorter side resized to this, then centre crop (default image_size * 8/7)
    num_classes: int | None = None  # synthetic (required); imagenet (checked against the folder)
    num_train: int | None = None  # synthetic: size; cifar/imagenet/ffcv: a fixed subset (seeded by `seed`)
    num_test: int | None = None  # as num_train
    channels: int = 3  # synthetic only
    seed: int = 0  # synthetic generation seed (the data set itself, not the data order)
    augment: bool = True  # the data set's standard augmentation on training batches
    # Progressive resizing (ImageNet-shaped data only; trainers/data/resolution.py): the training
    # crop side grows from min_res (epochs <= start_ramp_epoch) to max_res (epochs >= end_ramp_epoch).
    # None: train at image_size. Evaluation stays at image_size / eval_image_size.
    min_res: int | None = None
    max_res: int | None = None
    start_ramp_epoch: int = 0
    end_ramp_epoch: int = 0


@dataclass(frozen=True)
class OptimizerConfig:
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    decay_norm_and_bias: bool = True  # False: no weight decay on BatchNorm parameters and biases
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning rate as a function of the iteration (never of wall time or restarts)."""

    name: Literal["constant", "step", "cosine"] = "constant"
    milestones: tuple[int, ...] = ()  # step: iterations at which lr *= gamma
    gamma: float = 0.1
    warmup_iters: int = 0  # linear warmup from lr/warmup_iters to lr, then the schedule
    min_lr: float = 0.0  # cosine: lr at iteration T


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one network's training, shared by every job of a lineage."""

    model: str
    data: DataConfig
    iterations: int  # T
    batch_size: int = 128
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    label_smoothing: float = 0.0
    eval_every: int = 0  # iterations between evaluations; 0: only at the start and end
    eval_train_examples: int = 1024  # fixed subset of the training set for train metrics
    precision: Literal["auto", "fp32", "bf16", "fp64"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; fp64: oracle runs
    channels_last: bool = True  # CUDA only
    compile: bool = False  # torch.compile the model (CUDA)
    cuda_graphs: bool = False  # capture the whole training step as a CUDA graph (trainers/graphed.py; CUDA only)
    # Deterministic kernels (trainers/determinism.py): on a GPU, the same job gives the same bits.
    # Part of the id: a non-deterministic run's weights are another result (the noise-floor pair).
    deterministic: bool = True
    # BatchNorm on N ranks (trainers/distributed.py): "global" normalises over the whole global
    # batch for every N; "per_replica" over each rank's slice of bn_batch examples (then the
    # per-rank batch is part of the job, so N = batch_size / bn_batch). Left out of the id at
    # these defaults (orchestrator/jobid.py): every job stored before keeps its id.
    bn_sync: Literal["global", "per_replica"] = "global"
    bn_batch: int | None = None
    # Network slimming (Liu et al. 2017): l1_gamma * sign(gamma) added to every BatchNorm scale's
    # gradient after backward. Left out of the job id at 0 (orchestrator/jobid.py).
    l1_gamma: float = 0.0
    # BatchNorm scales at initialisation (trainers.models.build_model): None, the model's own
    # (U(0, 1) for the CIFAR networks); a number fills them (0.5: network slimming, early-bird).
    # Left out of the job id at None (orchestrator/jobid.py).
    bn_scale_init: float | None = None


@dataclass(frozen=True)
class PruneConfig:
    strategy: PruneStrategy = "magnitude_global"
    fraction: float = 0.2  # of the *remaining* prunable weights (or channels), per level
    ignore: tuple[str, ...] = ()  # parameter names (fnmatch patterns) that are never pruned
    # Which trained weights a level keeps (Zhou et al. 2019): "magnitude" |w_T| (large_final) or
    # "magnitude_increase" |w_T| - |w_k| (needs W_k: paths.rewind_weights). Left out of the job id
    # at its default, so existing jobs keep their ids (orchestrator/jobid.py).
    criterion: Literal["magnitude", "magnitude_increase"] = "magnitude"
    # Structured pruning (trainers/structure.py, trainers/methods/channels.py); left out of the
    # job id at their defaults, so weight-granularity jobs keep their ids.
    granularity: Literal["weight", "channel"] = "weight"
    channel_score: Literal["l1_filter", "bn_gamma", "hrank"] = "l1_filter"
    groups: Literal["block_internal", "coupled"] = "block_internal"
    # hrank (Lin et al. 2020): the average feature-map rank over this many training batches of
    # this size (the reference's 5 of 128); read by hrank alone, left out of the id at these defaults.
    rank_batches: int = 5
    rank_batch_size: int = 128
    # magnitude_layerwise: (fnmatch pattern, fraction) pairs, the first match a tensor's own rate
    # (the others prune at `fraction`); left out of the job id when empty.
    layer_fractions: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class AtInitConfig:
    """Pruning at initialization (trainers/methods/): the head of a train job scores W_k with
    `method` and keeps exactly `keep` weights, then the job trains k -> T from the masked W_k.

    Every field decides the mask; the planner sets the fields a method does not read to their
    defaults, so that, say, SNIP's id does not change with SynFlow's number of rounds.
    """

    method: str  # a key of trainers.methods.AT_INIT
    keep: tuple[int, ...]  # scope global: (total,); layerwise: one count per prunable tensor, in mask order
    scope: Literal["global", "layerwise"] = "global"
    ignore: tuple[str, ...] = ()  # as PruneConfig.ignore
    invert: bool = False  # Frankle et al. 2021's ablation: keep the lowest scores, same counts
    shuffle: bool = False  # ... the method's mask shuffled within each layer (TrainJob.prune_seed)
    seed: int = 0  # random_init's scores
    examples_per_class: int = 0  # snip/grasp: the class-balanced scoring batch (seeded by data_seed and k;
    # augmented as training batches are, when data.augment)
    bn_mode: Literal["eval", "train"] = "eval"  # snip/grasp: BatchNorm while scoring (SynFlow: always eval)
    # snip/grasp: which examples_per_class x classes examples are scored: class_balanced (the first
    # of each class along the scoring stream) or random (the first that many of the stream, whatever
    # their classes: Synaptic-Flow's prune_dataset_ratio). Left out of the id at its default.
    sample: Literal["class_balanced", "random"] = "class_balanced"
    temperature: float = 0.0  # grasp/grasp_abs: logits / T
    iterations: int = 1  # synflow: rounds of scoring and pruning
    schedule: Literal["exponential", "linear"] = "exponential"  # synflow: kept count after each round


@dataclass(frozen=True)
class EarlyBirdConfig:
    """An early-bird search (You et al. 2020; trainers/early_bird.py): the detectors run at every
    epoch start of a dense run; each fraction's mask and weights at detection are outputs."""

    kind: Literal["channel", "unstructured"] = "channel"  # BatchNorm scales of the groups, or |w| of the prunable weights
    fractions: tuple[float, ...] = (0.3, 0.5, 0.7)  # p: what each detector's mask prunes
    queue: int = 5
    threshold: float = 0.1
    stop: Literal["at_detection", "never"] = "at_detection"  # stop once every detector has fired
    groups: Literal["block_internal", "coupled"] = "block_internal"  # channel kind: the ranked channels
    ignore: tuple[str, ...] = ()  # never-pruned weights (pruning.ignore)


@dataclass(frozen=True)
class TransferConfig:
    """Ticket transfer (Morcos et al., NeurIPS 2019; trainers/transfer.py): the job starts from
    another experiment's ticket, the source level's mask (paths.parent_mask) with the source's
    weights at its rewinding point W_k (paths.rewind_weights), and trains it on this job's data
    and recipe. The output layer (`fc`, every model's) cannot transfer when the number of
    classes differs: `output_layer` says what it is (resolved by the planner: never "auto")."""

    output_layer: Literal["source", "fresh", "dense"]  # the source's; fresh W0 masked at the source's density; fresh and unpruned
    # the control at equal per-layer counts: the ticket itself, its mask shuffled within each
    # layer (with the transferred weights), or its mask with fresh weights (W0 of init_seed)
    control: Literal["ticket", "random_mask", "fresh_weights"] = "ticket"
    seed: int = 0  # the random draws: a fresh output layer's mask, the random_mask shuffle


@dataclass(frozen=True)
class TrainJob:
    """One `train` job: a dense run, a level of a lineage, or a branch child.

    Level 0 (dense): prune=None, start_iter=0, weights from init_seed, save_iters = rewinding
    points. Level l >= 1: prune the parent's final weights (head of this job), then start
    according to `retrain`, from `start_iter` (= k) to `end_iter` (= T).
    """

    train: TrainConfig
    init_seed: int  # W0
    data_seed: int  # the data-order stream (permutations and augmentation)
    start_iter: int = 0
    end_iter: int | None = None  # None: train.iterations
    save_iters: tuple[int, ...] = ()  # write W_k at these iterations
    prune: PruneConfig | None = None  # None: keep the parent mask (dense run, or mask given)
    retrain: RetrainMode = "rewind"
    finetune_lr: float = 1e-3  # finetune: the fixed learning rate
    reinit_seed: int | None = None  # control: same mask, fresh weights drawn from this seed
    prune_seed: int = 0  # random pruning control: which random mask
    # 0: an ordinary job. 1, 2: the two runs of a noise-floor pair (sweep.branch.noise_floor):
    # the same inputs and data seed with non-deterministic kernels; the tag changes nothing the
    # job computes, it keeps the two runs' ids apart.
    noise_replica: int = 0
    # Pruning at initialization: the mask is computed from W_k (paths.rewind_weights) at the head
    # of this job (prune must be None). Left out of the id when None, as is reinit_keep_signs
    # when False.
    at_init: AtInitConfig | None = None
    # control random_reinit_signs (Zhou et al. 2019): with reinit_seed, fresh magnitudes carrying
    # the signs of W_k (paths.rewind_weights).
    reinit_keep_signs: bool = False
    # Early-bird (left out of the id at their defaults): a search job, and a retrain job that
    # continues from the detection point its search recorded (TrainPaths.detection).
    early_bird: EarlyBirdConfig | None = None
    start_at_detection: bool = False
    # Reporting only: the channel groups (pruning.groups mode, ignore patterns) over which a job
    # whose channel mask was made elsewhere (an early-bird retrain of a channel search) reports
    # runs.channel_density. No weight depends on it, so it is never part of the id (jobid._EXCLUDED).
    channel_report: tuple[str, tuple[str, ...]] | None = None
    # Ticket transfer (left out of the id when None): the inputs are the source's mask and W_k.
    transfer: TransferConfig | None = None

    @property
    def stop_iter(self) -> int:
        return self.train.iterations if self.end_iter is None else self.end_iter


@dataclass(frozen=True)
class TrainPaths:
    """Where a train job reads its inputs and writes its artifacts (all local or shared paths)."""

    out_dir: str  # weights.pt, mask.pt, w_<k>.pt (rewinding points), checkpoint.pt
    parent_weights: str | None = None  # final weights of the previous level
    parent_mask: str | None = None  # mask of the previous level
    rewind_weights: str | None = None  # W_k from the dense run (retrain=rewind)
    checkpoint_every_iters: int = 0  # 0: only by time
    checkpoint_every_seconds: float = 300.0
    detection: str | None = None  # eb_<p>.json of an early-bird search (start_at_detection)


@dataclass(frozen=True)
class InterpolateJob:
    """One `interpolate` job: the linear path between two trained networks."""

    train: TrainConfig  # model, data, batch size and precision used for evaluation
    num_alphas: int = 31
    splits: tuple[str, ...] = ("test", "train")
    train_examples: int = 10_000  # fixed subset of the training set
    bn_reset: bool = False  # recompute BatchNorm statistics for each interpolated network
    bn_reset_batches: int = 8


@dataclass(frozen=True)
class InterpolatePaths:
    weights_a: str
    weights_b: str
    mask: str | None = None  # both endpoints share it; applied to the interpolated weights


# ---- results (plain data the orchestrator turns into Parquet rows) --------------------------


@dataclass
class MetricRow:
    iteration: int
    split: str  # "test" | "train"
    loss: float
    accuracy: float


@dataclass
class LayerRow:
    layer: str  # a prunable tensor's name
    kept: int
    total: int
    weight_correlation: float | None  # Pearson, starting vs final weights over the kept entries


@dataclass
class TrainResult:
    metrics: list[MetricRow]
    test_loss: float
    test_accuracy: float
    train_loss: float
    train_accuracy: float
    density: float
    start_iter: int
    end_iter: int
    wall_seconds: float
    device: str
    weights_path: str
    mask_path: str
    saved_weights: dict[int, str]  # rewinding point -> path of W_k
    resumed_from: int | None = None  # iteration of the checkpoint this attempt resumed from
    deterministic: bool | None = None  # whether the kernels were (None: a result written before this was recorded)
    # How it trained: "single" (train()), "stacked" (packed as one network: trainers/packed.py) or
    # "sequential" (a pack trained one by one, asked for or fallen back to: never silently).
    strategy: str = "single"
    # Pearson correlation of the starting weights (m * W_k, or W_0 for a dense run) and the final
    # weights over the kept prunable entries (Liu et al. 2021); None: not recorded
    weight_correlation: float | None = None
    layers: list[LayerRow] = field(default_factory=list)
    # Structured pruning's measures: alive channels / channels of the pruned groups (channel
    # granularity only), and the multiply-accumulates of Conv/Linear layers with the mask's
    # weights removed over the dense network's (trainers/structure.flops_fraction).
    channel_density: float | None = None
    flops_fraction: float | None = None
    early_bird: list[dict] | None = None  # a search's detections, one per fraction (trainers/early_bird.py)
    nonfinite_iter: int | None = None  # the first iteration whose training loss was not finite: the job stopped there
    # Layer collapse (trainers/connectivity.py): the mask leaves a prunable layer empty or no path
    # from input to output; `disconnection` says which. None: recorded before this was measured.
    disconnected: bool | None = None
    disconnection: str | None = None


@dataclass
class InterpolationRow:
    split: str
    alpha: float
    loss: float
    error: float


@dataclass
class Instability:
    split: str
    error_a: float
    error_b: float
    max_error: float
    barrier: float  # max_a error(a) - (error(0) + error(1)) / 2


@dataclass
class InterpolateResult:
    rows: list[InterpolationRow]
    instability: list[Instability]
    wall_seconds: float
    device: str
