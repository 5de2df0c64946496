"""`lth plan` against a store: what is done, what is left, and the device time the rest needs.

The time left comes only from measured figures: the newest GPU result in `benchmarks/results/`
(written by `python -m benchmarks.run --json ...`) with a training row for the config's model at
its batch size (`images_per_s.ours_masked`: our trainer with masks, the code path of a pruned
job). Without such a measurement the estimate is "pending", never guessed from another device.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass

from orchestrator.graph import Plan
from orchestrator.store import Store

RESULTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results")
MEASURE = "python -m benchmarks.run --sections training --json benchmarks/results/<gpu>-<date>.json (on the GPU)"


@dataclass
class Progress:
    done: int
    remaining: int
    remaining_images: dict[tuple[str, int, bool], int]  # (model, batch size, deterministic) -> training images left
    gpu_hours: float | None
    source: str  # where the figure comes from, or why there is none


def _gpu_rate(model: str, batch_size: int, results_dir: str, deterministic: bool = True) -> tuple[float, str] | None:
    """(images/s, source) of the newest GPU benchmark of `model` at `batch_size`, with the
    job's kernel setting (benchmarks report both; rows from before that were deterministic).
    Results may sit in subdirectories (a GPU session's folder: benchmarks/gpu_session.sh)."""
    paths = glob.glob(os.path.join(results_dir, "**", "*.json"), recursive=True)
    for path in sorted(paths, key=os.path.getmtime, reverse=True):
        try:
            with open(path) as f:
                result = json.load(f)
        except (OSError, ValueError):
            continue
        device = str(result.get("device", ""))
        if "cuda" not in device.lower() and "nvidia" not in device.lower():
            continue
        for row in result.get("training") or []:
            if (row.get("model"), row.get("batch_size"), row.get("deterministic", True)) == (model, batch_size, deterministic):
                rate = (row.get("images_per_s") or {}).get("ours_masked")
                if rate:
                    return float(rate), f"{os.path.relpath(path)} ({device}, {result.get('date', '?')})"
    return None


def sweep_progress(plan: Plan, store: Store, results_dir: str = RESULTS_DIR) -> Progress:
    done = store.scan_artifacts().done() & set(plan.jobs)
    left: dict[tuple[str, int], int] = {}
    for job in plan.jobs.values():
        if job.id in done or job.kind != "train":
            continue
        key = (job.spec.train.model, job.spec.train.batch_size, job.spec.train.deterministic)
        left[key] = left.get(key, 0) + (job.spec.stop_iter - job.spec.start_iter) * job.spec.train.batch_size
    hours, sources, missing = 0.0, [], []
    for (model, batch, deterministic), images in sorted(left.items()):
        found = _gpu_rate(model, batch, results_dir, deterministic)
        if found is None:
            missing.append(f"{model} at batch {batch}" + ("" if deterministic else " (non-deterministic kernels)"))
            continue
        rate, source = found
        hours += images / rate / 3600
        sources.append(source)
    if missing:
        source = f"pending: no GPU benchmark of {', '.join(missing)} in {os.path.relpath(results_dir)}; measure with {MEASURE}"
        return Progress(len(done), len(plan.jobs) - len(done), left, None, source)
    source = ("training only (interpolations not counted), from " + "; ".join(sorted(set(sources)))) if sources else "nothing left"
    return Progress(len(done), len(plan.jobs) - len(done), left, hours, source)
