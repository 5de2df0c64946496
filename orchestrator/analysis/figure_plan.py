"""What the figures show, decided without drawing: their titles, the file formats, and which
lines a crowded figure keeps. Apart from figures.py so that the summary (present.py, curves.py,
the report's headings) never imports matplotlib: `lth analyze` prints the summary before it
loads the plotting library."""
from __future__ import annotations

import numpy as np

MAX_LINES = 6  # more lines than this are unreadable: pick evenly spaced ones
FORMATS = ("png", "pdf", "svg")
# One title per figure, in words: the report's section headings and the W&B keys' captions.
TITLES = {
    "instability_vs_rewind": "Instability against the rewinding point",
    "interpolation_path": "Error along the linear path between two children",
    "accuracy_vs_density": "Test accuracy against the weights remaining",
    "learning_curves": "Learning curves",
    "compare_instability": "Instability against the rewinding point, by experiment",
    "compare_accuracy": "Test accuracy against the weights remaining, by experiment",
    "method_comparison": "Every family at IMP's densities: test accuracy against the weights remaining",
    "layer_profiles": "Per-layer density of each method at one level",
    "weight_correlation": "Weight correlation (starting vs final weights) against the weights remaining",
    "compare_weight_correlation": "Weight correlation against the weights remaining, by experiment",
    "early_bird_distances": "Early-bird: mask distance between every two epochs of the search",
    "transfer_accuracy": "Ticket transfer: test accuracy against the weights remaining",
}


def pick(values: list, n: int = MAX_LINES) -> list:
    """At most n of `values`, evenly spaced, first and last included."""
    if len(values) <= n:
        return values
    idx = np.unique(np.linspace(0, len(values) - 1, n).round().astype(int))
    return [values[i] for i in idx]


def primary_mode(modes: list[str]) -> str | None:
    """The retrain mode a one-mode figure draws: rewind when measured."""
    return "rewind" if "rewind" in modes else (sorted(modes)[0] if modes else None)
