"""The experiment spec: one YAML file, validated into typed objects.

`load_spec(path, overrides)` reads the YAML, applies `--set a.b.c=VALUE` overrides, validates
everything that can be checked without touching the data (`check_data` does that, for
`lth run` only), and resolves epochs into iterations, so the returned spec is the exact,
iteration-based description of the sweep (`spec.model_dump()` is what reports and W&B
record; validating that dump again gives the same spec).

Every problem is a `SpecError` naming the field as a dotted path ("sweep.rewind_iters[1]").

One module per config section (data, train, pruning, sweep, resources); experiment.py ties them
together and loading.py reads a file (base chains, --set overrides, grids).
"""
# The names the rest of the project imports from orchestrator.spec.
from orchestrator.spec.base import SpecError
from orchestrator.spec.data import DataSpec
from orchestrator.spec.experiment import ExperimentSpec, final_lr, validate_spec
from orchestrator.spec.loading import load_raw, load_spec, load_specs
from orchestrator.spec.references import load_reference_file, validate_reference
from orchestrator.spec.resources import AUTO_PACK, SMALL_MODELS
from orchestrator.spec.train import ScheduleSpec
from orchestrator.spec.yaml_reader import parse_yaml

__all__ = [
    "AUTO_PACK", "DataSpec", "ExperimentSpec", "SMALL_MODELS", "ScheduleSpec", "SpecError", "final_lr",
    "load_raw", "load_reference_file", "load_spec", "load_specs", "parse_yaml", "validate_reference", "validate_spec",
]
