"""ExperimentSpec, the whole config, with its cross-section checks and epochs -> iterations; and
TransferSpec, which lives here because a transfer's source is itself an ExperimentSpec.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, model_validator

from orchestrator import limits as L
from orchestrator.spec.base import _SEED_RANGE, SpecError, _at_most, _Model, _unique
from orchestrator.spec.data import DataSpec
from orchestrator.spec.errors import _errors
from orchestrator.spec.pruning import PruningSpec
from orchestrator.spec.resources import AUTO_PACK, SMALL_MODELS, ResourcesSpec, SchedulerSpec, TrackingSpec
from orchestrator.spec.sweep import SweepSpec
from orchestrator.spec.train import TrainSpec
from trainers.compiling import compile_by_default
from trainers.data.catalog import DESCRIPTIONS
from trainers.graph_rules import cuda_graphs_problem
from trainers.jobs import DataConfig, PruneConfig, TrainConfig
from trainers.model_catalog import model_names


class TransferSpec(_Model):
    source: dict[str, Any] = Field(description="the source experiment whose tickets are taken: the path of its config file (relative to this one; read with its base chain) or its config inline. Its jobs are planned here with their own ids, so the ones in the store are reused and missing ones trained first")
    replicate: int = Field(0, ge=L.MIN_SEED, le=L.MAX_SEED, description="the source replicate (its init seed) whose tickets are taken" + _SEED_RANGE)
    rewind_iter: int = Field(0, ge=0, le=L.MAX_ITERATIONS, description="the source's rewinding point k (iterations, one of its sweep.rewind_iters): a ticket is the source level's mask with the source's weights W_k (late resetting, Morcos et al. 2019)" + _at_most(L.MAX_ITERATIONS))
    levels: list[Annotated[int, Field(ge=1, le=L.MAX_LEVELS)]] = Field(min_length=1, max_length=L.MAX_LEVELS, description="the source's pruning levels whose tickets are transferred (each 1..its pruning.levels); each one a transfer job per replicate of this config" + _at_most(L.MAX_LEVELS) + " levels, each at most " + f"{L.MAX_LEVELS}")
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



def validate_spec(data: Any) -> ExperimentSpec:
    """A plain dict (parsed YAML) -> ExperimentSpec, or SpecError."""
    if not isinstance(data, dict):
        raise SpecError("<root>", f"an experiment spec is a mapping of keys to values, got {type(data).__name__}")
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as e:
        errs = _errors(e, ExperimentSpec)
        raise SpecError(errs[0][0], errs[0][1], errs[1:]) from None
