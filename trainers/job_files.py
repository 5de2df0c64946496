"""The file names a train job writes into its directory, without torch: trainers/train.py writes
them, and the planner names them as later jobs' inputs without importing torch."""
from __future__ import annotations

WEIGHTS, MASK, CHECKPOINT, RESULT = "weights.pt", "mask.pt", "checkpoint.pt", "result.json"


def rewind_file(k: int) -> str:
    """W_k, the weights a run saved at rewinding point k."""
    return f"w_{int(k)}.pt"
