"""Every Parquet table of the store, in one place (DESIGN.md "The store" is the contract).

Tables live at STORE/results/<table>/experiment=<name>/part-*.parquet; `experiment` is the
hive partition column, so it is part of the logical schema but not of the files' columns.
Every table carries `config_hash` (orchestrator.experiment.config_hash): the resolved config
the row was written under; STORE/experiments/<name>/configs/<hash>.yaml holds that config.
"""
from __future__ import annotations

import pyarrow as pa

RUNS = pa.schema(
    [
        ("experiment", pa.string()),
        ("job_id", pa.string()),
        ("parent_job_id", pa.string()),
        ("role", pa.string()),  # "level" | "branch" | "noise" (a noise-floor child) | "pai" (pruning at init) | "source" | "transfer"
        ("replicate", pa.int64()),
        ("rewind_iter", pa.int64()),
        ("level", pa.int64()),
        ("data_seed", pa.int64()),
        ("retrain", pa.string()),
        ("prune_strategy", pa.string()),
        ("density", pa.float64()),
        ("start_iter", pa.int64()),
        ("end_iter", pa.int64()),
        ("test_loss", pa.float64()),
        ("test_accuracy", pa.float64()),
        ("train_loss", pa.float64()),
        ("train_accuracy", pa.float64()),
        ("wall_seconds", pa.float64()),
        ("attempts", pa.int64()),
        ("host", pa.string()),
        ("node", pa.string()),
        ("device", pa.string()),
        ("world_size", pa.int64()),  # ranks the job trained on (runtime, not identity); null: recorded before this column
        ("deterministic", pa.bool_()),  # kernels were deterministic; null: recorded before this column existed
        ("diverged", pa.bool_()),  # its loss was not finite (failures.divergence); null: recorded before this column existed
        ("config_hash", pa.string()),  # orchestrator.experiment.config_hash of the run's config
        ("weights_path", pa.string()),
        ("mask_path", pa.string()),
        # Pearson r of the starting and final weights over the kept prunable entries (Liu et al.
        # 2021); null: a run recorded before this column existed
        ("weight_correlation", pa.float64()),
        ("granularity", pa.string()),  # pruning.granularity: weight | channel
        ("channel_density", pa.float64()),  # alive / all channels of the pruned groups; null: weight granularity
        ("flops_fraction", pa.float64()),  # Conv/Linear multiply-accumulates with the mask over dense; null: not recorded
        # layer collapse (trainers/connectivity.py): a prunable layer with no weight left, or no path of
        # kept weights from input to output; null: recorded before this column existed
        ("disconnected", pa.bool_()),
        # ticket transfer (role transfer): the source level job whose mask (and its dense run's
        # W_k) the job started from, and the source's data set and optimizer; null otherwise
        ("ticket_source", pa.string()),
        ("ticket_source_data", pa.string()),
        ("ticket_source_optimizer", pa.string()),
    ]
)

# One row per prunable tensor of every finished train job: its kept count and weight correlation.
LAYERS = pa.schema(
    [
        ("experiment", pa.string()),
        ("job_id", pa.string()),
        ("layer", pa.string()),
        ("kept", pa.int64()),
        ("total", pa.int64()),
        ("weight_correlation", pa.float64()),  # as runs.weight_correlation, over this tensor's kept entries
        ("config_hash", pa.string()),
    ]
)

METRICS = pa.schema(
    [
        ("experiment", pa.string()),
        ("job_id", pa.string()),
        ("iteration", pa.int64()),
        ("split", pa.string()),
        ("loss", pa.float64()),
        ("accuracy", pa.float64()),
        ("config_hash", pa.string()),
    ]
)

# The columns that identify one measurement of a pair of branch children.
_PAIR = [
    ("experiment", pa.string()),
    ("pair_id", pa.string()),
    ("job_a", pa.string()),
    ("job_b", pa.string()),
    ("replicate", pa.int64()),
    ("rewind_iter", pa.int64()),
    ("level", pa.int64()),
    ("density", pa.float64()),
    ("split", pa.string()),
]

INTERPOLATION = pa.schema(
    _PAIR + [("alpha", pa.float64()), ("loss", pa.float64()), ("error", pa.float64()), ("config_hash", pa.string())]
)

INSTABILITY = pa.schema(
    _PAIR
    + [
        ("error_a", pa.float64()),
        ("error_b", pa.float64()),
        ("max_error", pa.float64()),
        ("barrier", pa.float64()),  # max_a error(a) - (error(0) + error(1)) / 2
        ("config_hash", pa.string()),
    ]
)

# One row per fraction of an early-bird search (pruning.early_bird; trainers/early_bird.py).
EARLY_BIRD = pa.schema(
    [
        ("experiment", pa.string()),
        ("job_id", pa.string()),  # the search job
        ("fraction", pa.float64()),  # p of the detector
        ("detected", pa.bool_()),  # false: never fired; the mask is the one at the end of the search
        ("detect_epoch", pa.int64()),  # epochs trained at detection; null when never detected
        ("detect_iter", pa.int64()),  # iteration of the mask and weights saved (the stop when not detected)
        ("distances", pa.list_(pa.float64())),  # newest mask vs each older one in the queue, oldest first
        ("channels_kept", pa.int64()),  # channels (kind channel) or weights (kind unstructured) kept
        ("density", pa.float64()),  # weight density of the mask over Conv/Linear weights
        ("config_hash", pa.string()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "runs": RUNS,
    "metrics": METRICS,
    "interpolation": INTERPOLATION,
    "instability": INSTABILITY,
    "layers": LAYERS,
    "early_bird": EARLY_BIRD,
}


# The column naming the job a row belongs to: a job's rows of a table are stored exactly once.
KEY_COLUMN: dict[str, str] = {"runs": "job_id", "metrics": "job_id", "interpolation": "pair_id", "instability": "pair_id",
                               "layers": "job_id",
                               "early_bird": "job_id"}


def file_schema(table: str) -> pa.Schema:
    """The columns stored inside part files (the partition column lives in the path)."""
    schema = TABLES[table]
    return schema.remove(schema.get_field_index("experiment"))
