"""The file names an early-bird search writes (trainers/early_bird.py), without torch: the planner
names them as its retrain jobs' inputs and the report reads one, neither importing torch."""
from __future__ import annotations

SCALES_FILE = "eb_scales.pt"  # per-epoch scores (channel kind): a new threshold is analysis, not training
DISTANCES_FILE = "eb_distances.json"  # {p: distance matrix of the per-epoch masks}: the paper's figure


def mask_file(p: float) -> str:
    return f"eb_mask_{float(p)!r}.pt"


def weights_file(p: float) -> str:
    return f"eb_weights_{float(p)!r}.pt"


def detection_file(p: float) -> str:
    return f"eb_{float(p)!r}.json"
