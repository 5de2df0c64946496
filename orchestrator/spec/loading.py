"""Loading a config file: its `base:` chain merged in, transfer sources inlined, overrides applied,
then validated (load_spec; load_specs for a grid), with the reference files it names checked.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import yaml

from orchestrator import limits as L
from orchestrator.spec.base import SpecError
from orchestrator.spec.experiment import ExperimentSpec, validate_spec
from orchestrator.spec.grid import expand_grid
from orchestrator.spec.overrides import apply_override
from orchestrator.spec.references import load_reference_file
from orchestrator.spec.yaml_reader import parse_yaml


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
