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
from typing import Any, Literal, Sequence, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from trainers.jobs import DataConfig, OptimizerConfig, PruneConfig, ScheduleConfig, TrainConfig


class SpecError(Exception):
    """A bad experiment spec: `field` is the dotted path of what is wrong, `reason` why."""

    def __init__(self, field: str, reason: str, others: Sequence[tuple[str, str]] = ()) -> None:
        self.field = field
        self.reason = reason
        self.others = list(others)  # further (field, reason) problems found at the same time
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [f"{self.field}: {self.reason}"]
        lines += [f"{f}: {r}" for f, r in self.others]
        return "\n".join(lines)


# strict: a YAML string is not silently a number, a float not silently an int.
# allow_inf_nan=False: .inf or .nan in a float field is bad input, named like any other.
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _Model(BaseModel):
    model_config = _STRICT


class DataSpec(_Model):
    name: str = "digits"
    root: str | None = None
    image_size: int | None = Field(None, gt=0)
    eval_image_size: int | None = Field(None, gt=0)
    num_classes: int | None = Field(None, ge=2)
    num_train: int | None = Field(None, gt=0)
    num_test: int | None = Field(None, gt=0)
    channels: int = Field(3, gt=0)
    seed: int = 0
    augment: bool = True
    # Progressive resizing (ImageNet-shaped data): training side from min_res to max_res over
    # epochs start_ramp_epoch..end_ramp_epoch (trainers/data/resolution.py checks the rest).
    min_res: int | None = Field(None, gt=0)
    max_res: int | None = Field(None, gt=0)
    start_ramp_epoch: int = Field(0, ge=0)
    end_ramp_epoch: int = Field(0, ge=0)

    def to_config(self) -> DataConfig:
        return DataConfig(**self.model_dump())


class OptimizerSpec(_Model):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    decay_norm_and_bias: bool = True
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2)

    def to_config(self) -> OptimizerConfig:
        d = self.model_dump()
        d["betas"] = tuple(d["betas"])
        return OptimizerConfig(**d)


class ScheduleSpec(_Model):
    name: Literal["constant", "step", "cosine"] = "constant"
    milestones: list[int] | None = None  # iterations
    milestones_epochs: list[float] | None = None  # or epochs (resolved into `milestones`)
    gamma: float = Field(0.1, gt=0)
    warmup_iters: int | None = Field(None, ge=0)
    warmup_epochs: float | None = Field(None, ge=0)
    min_lr: float = Field(0.0, ge=0)

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
    iterations: int | None = Field(None, gt=0)
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(128, gt=0)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    eval_every: int | None = Field(None, ge=0)
    eval_every_epochs: float | None = Field(None, ge=0)
    eval_train_examples: int = Field(1024, gt=0)  # train metrics need at least one example
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool = True
    compile: bool = False

    @model_validator(mode="after")
    def _length(self) -> "TrainSpec":
        if (self.iterations is None) == (self.epochs is None):
            raise SpecError("train.iterations", "give exactly one of train.iterations and train.epochs")
        _at_most_one(self, "eval_every", "eval_every_epochs", where="train")
        return self


class PruningSpec(_Model):
    strategy: Literal["magnitude_global", "magnitude_layerwise"] = "magnitude_global"
    fraction: float = Field(0.2, gt=0, lt=1)
    levels: int = Field(8, ge=0)
    ignore: list[str] = Field(default_factory=list)
    retrain: list[Literal["rewind", "lr_rewind", "finetune"]] = Field(default_factory=lambda: ["rewind"], min_length=1)
    finetune_lr: float = Field(1e-3, gt=0)
    controls: list[Literal["random_prune", "random_reinit"]] = Field(default_factory=list)

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
        return self

    def to_config(self, strategy: str | None = None) -> PruneConfig:
        return PruneConfig(strategy=strategy or self.strategy, fraction=self.fraction, ignore=tuple(self.ignore))


class BranchSpec(_Model):
    seeds: list[int] = Field(default_factory=list)  # children's data-order seeds
    levels: Union[list[int], Literal["all"]] = "all"
    # 31 in Frankle et al. 2020; each point is one evaluation per split, so 1001 (a step of
    # 0.001) is far beyond any resolution a barrier needs, and bounds a typo's cost.
    num_alphas: int = Field(31, ge=2, le=1001)
    splits: list[Literal["test", "train"]] = Field(default_factory=lambda: ["test", "train"], min_length=1)
    train_examples: int = Field(10_000, gt=0)
    bn_reset: bool = False
    bn_reset_batches: int = Field(8, gt=0)

    @model_validator(mode="after")
    def _lists(self) -> "BranchSpec":
        _unique(self.seeds, "sweep.branch.seeds")
        _unique(self.splits, "sweep.branch.splits")
        if self.levels != "all":
            _unique(self.levels, "sweep.branch.levels")
            for i, lev in enumerate(self.levels):
                if lev < 0:
                    raise SpecError(f"sweep.branch.levels[{i}]", f"a level is >= 0, got {lev}")
        return self


class SweepSpec(_Model):
    replicates: int | None = Field(None, ge=1)  # init seeds 0..n-1
    init_seeds: list[int] | None = Field(None, min_length=1)
    rewind_iters: list[int] | None = Field(None, min_length=1)
    rewind_epochs: list[float] | None = Field(None, min_length=1)
    data_seed: int = 0
    branch: BranchSpec = Field(default_factory=BranchSpec)

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

    gpus: float = Field(0, ge=0)
    cpus: float = Field(1, ge=0)
    memory_gb: float | None = Field(None, gt=0)
    pack: int = Field(
        1,
        ge=1,
        description="at most this many train jobs run together in one worker call (trainers.packed."
        "train_packed): ready jobs with the same TrainConfig, start and end iterations and learning-rate "
        "schedule (children of one branch point, the same level of several lineages); the pack shares "
        "this job's gpus/cpus. 1: every job alone. Results are those of one-by-one training (bitwise "
        "with pack_strategy sequential, up to float rounding with vmap)",
    )
    pack_strategy: Literal["auto", "vmap", "sequential"] = Field(
        "auto",
        description="how a pack trains: vmap (the K networks as one batched network: fewer, larger "
        "kernels, the win for small models on a GPU), sequential (one after the other in the same "
        "worker, sharing its data cache), auto (vmap on CUDA, sequential on CPU)",
    )

    @model_validator(mode="after")
    def _whole_gpus(self) -> "ResourcesSpec":
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise SpecError("resources.gpus", f"more than one GPU must be a whole number, got {self.gpus}")
        return self


class SchedulerSpec(_Model):
    max_attempts: int = Field(3, ge=1)
    priority: Literal["longest_path", "breadth_first"] = "longest_path"
    checkpoint_every_iters: int = Field(0, ge=0)
    checkpoint_every_seconds: float = Field(300.0, gt=0)
    max_workers: int | None = Field(None, ge=1)


class TrackingSpec(_Model):
    wandb: Literal["offline", "online", "disabled"] = "offline"
    project: str = Field("lth-sweep", min_length=1)
    entity: str | None = None


class ExperimentSpec(_Model):
    # a directory name in the store: not ".", "..", or hidden (a leading "." or "-")
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    model: str
    data: DataSpec = Field(default_factory=DataSpec)
    train: TrainSpec
    pruning: PruningSpec = Field(default_factory=PruningSpec)
    sweep: SweepSpec
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    store: str | None = None
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)

    _data_info: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve(self) -> "ExperimentSpec":
        """Cross-field checks, and epochs -> iterations (needs the data set's size)."""
        from trainers.data import DATASETS, describe
        from trainers.models import MODELS

        if self.model not in MODELS:
            raise SpecError("model", f"unknown model {self.model!r}; valid names: {', '.join(sorted(MODELS))}")
        if self.data.name not in DATASETS:
            raise SpecError("data.name", f"unknown data set {self.data.name!r}; valid names: {', '.join(sorted(DATASETS))}")
        try:
            info = describe(self.data.to_config())
        except (ValueError, KeyError, TypeError) as e:
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
            t.iterations, t.epochs = iters(t.epochs), None
        if t.eval_every_epochs is not None:
            t.eval_every, t.eval_every_epochs = max(1, iters(t.eval_every_epochs)), None
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
        b = sw.branch
        if b.levels != "all":
            for i, lev in enumerate(b.levels):
                if lev > self.pruning.levels:
                    raise SpecError(
                        f"sweep.branch.levels[{i}]",
                        f"level {lev} is beyond the last pruning level ({self.pruning.levels}, pruning.levels)",
                    )
        if b.seeds and "rewind" not in self.pruning.retrain:
            raise SpecError(
                "sweep.branch.seeds",
                "branches (instability analysis) are made on the rewind lineages: add 'rewind' to pruning.retrain",
            )
        return self

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
            compile=t.compile,
        )

    def prune_config(self, strategy: str | None = None) -> PruneConfig:
        return self.pruning.to_config(strategy)

    def check_data(self) -> None:
        """The data is present and readable (for `lth run`; `lth plan` does not need it)."""
        from trainers.data import check_available

        try:
            check_available(self.data_config())
        except (FileNotFoundError, ValueError, OSError) as e:
            raise SpecError("data.root", str(e)) from None


# ---- helpers ------------------------------------------------------------------------------


def _data_error(e: Exception) -> SpecError:
    """The data layer names the field at the start of its messages ("data.min_res: ..."): keep it."""
    text = str(e)
    m = re.match(r"(data\.[a-z_]+)(?::\s*|\s+)(.*)", text, re.S)
    return SpecError(m.group(1), m.group(2)) if m else SpecError("data", text)


def _at_most_one(model: BaseModel, a: str, b: str, where: str) -> None:
    if getattr(model, a) is not None and getattr(model, b) is not None:
        raise SpecError(f"{where}.{b}", f"give at most one of {where}.{a} and {where}.{b}")


def _unique(values: Sequence[Any], field: str) -> None:
    seen = set()
    for i, v in enumerate(values):
        if v in seen:
            raise SpecError(f"{field}[{i}]", f"{v!r} appears twice")
        seen.add(v)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1 wants `1.0e-4`)."""


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


def _errors(e: ValidationError) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in e.errors():
        loc = err["loc"]
        field = _path_text(loc)
        if err["type"] == "extra_forbidden":
            holder = _model_at(loc)
            valid = f" (valid keys: {', '.join(holder.model_fields)})" if holder else ""
            reason = f"unknown key{valid}"
        elif err["type"] == "missing":
            reason = "required field is missing"
        else:
            reason = f"{err['msg']} (got {err.get('input')!r})"
        if (field, reason) not in out:
            out.append((field, reason))
    return out


def validate_spec(data: Any) -> ExperimentSpec:
    """A plain dict (parsed YAML) -> ExperimentSpec, or SpecError."""
    if not isinstance(data, dict):
        raise SpecError("<root>", f"an experiment spec is a mapping of keys to values, got {type(data).__name__}")
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as e:
        errs = _errors(e)
        raise SpecError(errs[0][0], errs[0][1], errs[1:]) from None


# ---- --set overrides ----------------------------------------------------------------------

_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")


def _parse_key(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for token in key.split("."):
        m = _TOKEN.match(token)
        if not m:
            raise SpecError(key, f"--set: {token!r} is not a config key (keys look like a.b.c or a.b[1])")
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
        raise SpecError(key, f"--set: the value {text!r} is not valid YAML ({e})") from None
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
                raise SpecError(key, f"--set: unknown key {part!r} at {where} (valid keys: {', '.join(cls.model_fields)})")
            sub = _submodel(cls, part)
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


def load_spec(path: str, overrides: Sequence[str] = ()) -> ExperimentSpec:
    """Read, override, validate and resolve an experiment YAML file."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SpecError(str(path), "no such config file") from None
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
    for override in overrides:
        apply_override(data, override)
    return validate_spec(data)
