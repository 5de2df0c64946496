"""The registered models' prunable weights, for planning without importing torch.

`lth plan` needs each model's Conv/Linear weight names and sizes (the density of every level)
and the registry's names. Building a model, even on the meta device, means importing torch and
torchvision: seconds and most of a gigabyte, for a command that should answer at once.

model_catalog.json holds them, generated from the real models (`python -m trainers.model_catalog
--write`, part of `make docs`) for every registered model on the input shape and class count of
every catalogued data set's defaults. It is not a second description of the models: it records
the fingerprint of what it was generated from (the bytes of models.py and pruning.py, and
torchvision's version) and is used only while that fingerprint matches; any other model, shape,
or a stale file is answered by building the real model on the meta device.
tests/test_model_catalog.py regenerates the file and fails when it differs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CATALOG_FILE = HERE / "model_catalog.json"
SOURCES = ("models.py", "pruning.py", "structure.py")  # what the recorded names and sizes are a function of (with torchvision)


def fingerprint() -> dict[str, str]:
    """What the catalog's entries depend on, read without importing torch."""
    out = {name: hashlib.sha256((HERE / name).read_bytes()).hexdigest() for name in SOURCES}
    out["torchvision"] = metadata.version("torchvision")
    return out


@lru_cache(maxsize=1)
def _load() -> dict[str, Any] | None:
    """The catalog, or None when it is missing, unreadable or generated from other sources."""
    try:
        data = json.loads(CATALOG_FILE.read_text())
        if data.get("fingerprint") != fingerprint():
            return None
        return data
    except (OSError, ValueError, metadata.PackageNotFoundError):
        return None


def _key(model: str, input_shape: tuple[int, ...], num_classes: int) -> str:
    return f"{model}|{'x'.join(str(int(d)) for d in input_shape)}|{int(num_classes)}"


def model_names() -> list[str]:
    """The model registry's names (trainers.models.MODELS)."""
    data = _load()
    if data is not None:
        return list(data["models"])
    from trainers.models import MODELS

    return sorted(MODELS)


def conv_linear_weights(model: str, input_shape: tuple[int, ...], num_classes: int) -> dict[str, int]:
    """Conv/Linear weight name -> number of weights, in state_dict order (pruning.candidate_names):
    from the catalog where it holds this (model, shape, classes), else from the real model built on
    the meta device. A model that cannot take this input raises the ValueError the model gives."""
    data = _load()
    if data is not None:
        entry = data["entries"].get(_key(model, input_shape, num_classes))
        if entry is not None:
            if "error" in entry:
                raise ValueError(entry["error"])
            return {name: int(size) for name, size in entry["weights"]}
    return _measure(model, tuple(input_shape), int(num_classes))


def channel_groups(model: str, input_shape: tuple[int, ...], num_classes: int, mode: str) -> dict[str, int]:
    """Channel group name -> channels (trainers/structure.py, pruning.groups `mode`), in model
    order, for planning structured pruning; ValueError where the model has none (or, for
    `coupled`, where torch-pruning is missing)."""
    data = _load()
    if data is not None:
        entry = data["entries"].get(_key(model, input_shape, num_classes))
        if entry is not None and "channels" in entry:
            found = entry["channels"][mode]
            if "error" in found:
                raise ValueError(found["error"])
            return {name: int(size) for name, size in found["groups"]}
    return _measure_channels(model, tuple(input_shape), int(num_classes), mode)


def has_batchnorm(model: str, input_shape: tuple[int, ...], num_classes: int) -> bool:
    """Whether the model has BatchNorm scales (train.l1_gamma, channel_score bn_gamma)."""
    data = _load()
    if data is not None:
        entry = data["entries"].get(_key(model, input_shape, num_classes))
        if entry is not None and "batchnorm" in entry:
            return bool(entry["batchnorm"])
    from trainers.models import meta_model

    import torch.nn as nn

    net = meta_model(model, tuple(input_shape), int(num_classes))
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def _measure_channels(model: str, input_shape: tuple[int, ...], num_classes: int, mode: str) -> dict[str, int]:
    from trainers.models import meta_model
    from trainers.structure import channel_groups as groups_of

    net = meta_model(model, input_shape, num_classes)
    return {g.name: g.size for g in groups_of(net, mode, input_shape=input_shape)}


def _measure(model: str, input_shape: tuple[int, ...], num_classes: int) -> dict[str, int]:
    from trainers.models import meta_model
    from trainers.pruning import candidate_names

    net = meta_model(model, input_shape, num_classes)
    params = dict(net.named_parameters())
    return {n: params[n].numel() for n in candidate_names(net)}


# ---- generation -------------------------------------------------------------------------


def generate() -> dict[str, Any]:
    """The catalog of every registered model on every catalogued data set's default shape."""
    from trainers.data.catalog import DESCRIPTIONS
    from trainers.data.ondisk import describe
    from trainers.jobs import DataConfig
    from trainers.models import MODELS

    shapes = sorted({(tuple(i.input_shape), i.num_classes) for i in (describe(DataConfig(name=n)) for n in DESCRIPTIONS)})
    entries: dict[str, Any] = {}
    for model in sorted(MODELS):
        for shape, classes in shapes:
            try:
                weights = _measure(model, shape, classes)
                entry: dict[str, Any] = {"weights": [[n, s] for n, s in weights.items()]}
                entry["batchnorm"] = has_batchnorm(model, shape, classes)
                entry["channels"] = {}
                for mode in ("block_internal", "coupled"):
                    try:
                        found = _measure_channels(model, shape, classes, mode)
                        entry["channels"][mode] = {"groups": [[n, c] for n, c in found.items()]}
                    except ValueError as e:
                        entry["channels"][mode] = {"error": str(e)}
                entries[_key(model, shape, classes)] = entry
            except ValueError as e:
                entries[_key(model, shape, classes)] = {"error": str(e)}
    return {
        "about": "generated by `python -m trainers.model_catalog --write` (make docs) from the real models; do not edit",
        "fingerprint": fingerprint(),
        "models": sorted(MODELS),
        "entries": entries,
    }


def render(data: dict[str, Any]) -> str:
    # One entry per line: a diff of the file shows which model changed.
    lines = ["{"]
    for k in ("about", "fingerprint", "models"):
        lines.append(f"  {json.dumps(k)}: {json.dumps(data[k])},")
    lines.append('  "entries": {')
    items = list(data["entries"].items())
    for i, (k, v) in enumerate(items):
        lines.append(f"    {json.dumps(k)}: {json.dumps(v)}{',' if i < len(items) - 1 else ''}")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainers.model_catalog", description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"write {CATALOG_FILE.name} (default: print it)")
    args = ap.parse_args(argv)
    text = render(generate())
    if args.write:
        CATALOG_FILE.write_text(text)
        print(f"wrote {CATALOG_FILE}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
