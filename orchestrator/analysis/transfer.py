"""The report's ticket-transfer section (`transfer`; orchestrator/transfer_plan.py), from the
`runs` table: per family and source level, the measured density and test accuracy (mean and
std over replicates) of

- `transfer`: the source's ticket (its mask and W_k) trained on this experiment's data and recipe;
- `transfer_random_mask`, `transfer_fresh_weights`: the controls at the ticket's per-layer counts;
- `target_imp`: this experiment's own IMP ticket (role level, rewind, level l: the same planned
  density as the source's level l), and `target_dense` its dense network (level 0).

Every row names the tickets' source data set and optimizer. Empty when nothing was transferred.
"""
from __future__ import annotations

from collections import defaultdict
from statistics import mean, pstdev

import pyarrow as pa

FAMILIES = ("transfer", "transfer_random_mask", "transfer_fresh_weights", "target_imp", "target_dense")


def transfer_table(runs: list[dict]) -> pa.Table | None:
    moved = [r for r in runs if r["role"] == "transfer"]
    if not moved:
        return None
    source_data = ", ".join(sorted({r["ticket_source_data"] for r in moved if r.get("ticket_source_data")}))
    source_opt = ", ".join(sorted({r["ticket_source_optimizer"] for r in moved if r.get("ticket_source_optimizer")}))
    cells: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in moved:
        cells[(r["retrain"], r["level"])].append(r)
    for r in runs:
        if r["role"] == "level" and r["retrain"] == "rewind" and r["prune_strategy"] != "random":
            cells[("target_imp" if r["level"] else "target_dense", r["level"])].append(r)
    rows = []
    for (family, level), rs in sorted(cells.items(), key=lambda kv: (kv[0][1], FAMILIES.index(kv[0][0]))):
        acc = [r["test_accuracy"] for r in rs]
        rows.append({"family": family, "level": level, "density": mean(r["density"] for r in rs),
                     "acc_mean": mean(acc), "acc_std": pstdev(acc), "n": len(rs),
                     "source_data": source_data, "source_optimizer": source_opt})
    return pa.Table.from_pylist(rows)


def transfer_side_by_side(tables: dict[str, pa.Table | None], experiments: list[str]) -> pa.Table | None:
    """`lth analyze A B`: per family and level, each experiment's test accuracy (and its
    difference from the first's), for the experiments that transferred tickets."""
    have = [n for n in experiments if tables.get(n) is not None]
    if not have:
        return None
    cells: dict[tuple[str, int], dict] = {}
    for n in have:
        for r in tables[n].to_pylist():
            cell = cells.setdefault((r["family"], r["level"]), {"family": r["family"], "level": r["level"]})
            cell[f"density_{n}"] = r["density"]
            cell[f"acc_{n}"] = r["acc_mean"]
    rows = []
    for key in sorted(cells, key=lambda k: (k[1], FAMILIES.index(k[0]))):
        row = cells[key]
        out = {"family": row["family"], "level": row["level"]}
        for n in have:
            out[f"density_{n}"] = row.get(f"density_{n}")
            out[f"acc_{n}"] = row.get(f"acc_{n}")
        for n in have[1:]:
            a, b = row.get(f"acc_{n}"), row.get(f"acc_{have[0]}")
            out[f"acc_diff_{n}_minus_{have[0]}"] = None if a is None or b is None else a - b
        rows.append(out)
    return pa.Table.from_pylist(rows)
