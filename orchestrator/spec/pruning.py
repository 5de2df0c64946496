"""The pruning section: IMP's levels and retrain modes, and its sub-sections (at_init, early_bird,
hrank).
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from orchestrator import limits as L
from orchestrator.spec.base import SpecError, _at_most, _Model, _unique
from trainers.jobs import PruneConfig


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
