"""Weight correlation (Liu et al., ICML 2021, "Lottery Ticket Preserves Weight Correlation"):
Pearson's r between a job's starting weights and its final weights over the prunable entries
its mask keeps, overall and per layer."""
from __future__ import annotations

from typing import Mapping

import torch

from trainers.jobs import LayerRow


def pearson(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """r of two equal-length vectors in float64; None when undefined (under 2 entries, or a
    constant vector)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    if a.numel() < 2:
        return None
    a, b = a - a.mean(), b - b.mean()
    den = float(torch.sqrt((a * a).sum() * (b * b).sum()))
    return None if den == 0.0 else float((a * b).sum()) / den


def kept_entries(weights: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    return weights[name].detach().reshape(-1).cpu()[mask[name].reshape(-1).cpu()]


def layer_rows(start: Mapping[str, torch.Tensor], final: Mapping[str, torch.Tensor],
               mask: Mapping[str, torch.Tensor]) -> tuple[float | None, list[LayerRow]]:
    """(overall r over every kept prunable entry, one LayerRow per prunable tensor in mask order)."""
    rows, xs, ys = [], [], []
    for n, m in mask.items():
        x, y = kept_entries(start, mask, n), kept_entries(final, mask, n)
        xs.append(x)
        ys.append(y)
        rows.append(LayerRow(layer=n, kept=int(m.count_nonzero()), total=m.numel(), weight_correlation=pearson(x, y)))
    overall = pearson(torch.cat(xs), torch.cat(ys)) if xs else None
    return overall, rows
