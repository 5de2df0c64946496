"""Published reference results (configs/references/*.yaml): their models, reading and validation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from orchestrator import limits as L
from orchestrator.spec.base import SpecError, _Model
from orchestrator.spec.errors import _path_text
from orchestrator.spec.yaml_reader import parse_yaml


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
