"""Intervals over replicates: the 95% Student's t interval of a mean, and of a difference.

Why Student's t: a sweep has few replicates (2 to 5 are usual), and with n values the sample
standard deviation s is itself uncertain; mean +- 1.96 s / sqrt(n) (the normal interval)
covers the true mean far less than 95% of the time at n = 2 or 3. Under the usual assumption
that replicate accuracies are roughly normal, (mean - mu) / (s / sqrt(n)) follows Student's t
with n - 1 degrees of freedom, so mean +- t_{0.975, n-1} s / sqrt(n) covers mu 95% of the time
for every n >= 2. With one value there is no s and no interval (null, never 0).

The t quantile is computed here, not imported (scipy is no dependency of the analysis; the
tests check this against scipy): the two-sided probability P(|T| <= t) of Student's t with an
integer number of degrees of freedom nu has a finite closed form in theta = atan(t / sqrt(nu))
(Abramowitz & Stegun 26.7.3 and 26.7.4), which is inverted by bisection.
"""
from __future__ import annotations

import math

import pyarrow as pa

LEVEL = 0.95


def t_two_sided(t: float, nu: int) -> float:
    """P(|T| <= t) for Student's t with nu >= 1 degrees of freedom."""
    th = math.atan(t / math.sqrt(nu))
    c2 = math.cos(th) ** 2
    if nu % 2 == 1:
        # (2/pi) [theta + sin(theta) cos(theta) (1 + 2/3 c^2 + (2 4)/(3 5) c^4 + ...)], nu - 2 terms' worth
        total, term = 0.0, 1.0
        for j in range(1, (nu - 1) // 2 + 1):
            total += term
            term *= (2 * j) / (2 * j + 1) * c2
        return 2 / math.pi * (th + math.sin(th) * math.cos(th) * total) if nu > 1 else 2 * th / math.pi
    # sin(theta) (1 + 1/2 c^2 + (1 3)/(2 4) c^4 + ...)
    total, term = 0.0, 1.0
    for j in range(1, nu // 2 + 1):
        total += term
        term *= (2 * j - 1) / (2 * j) * c2
    return math.sin(th) * total


_CACHE: dict[tuple[int, float], float] = {}


def t_quantile(nu: float, level: float = LEVEL) -> float:
    """The t with P(|T| <= t) = level (t_{(1+level)/2, nu}). A non-integer nu (Welch's) is
    rounded down: fewer degrees of freedom give a wider, never a narrower, interval."""
    n = max(1, int(math.floor(nu)))
    key = (n, level)
    if key not in _CACHE:
        lo, hi = 0.0, 1.0
        while t_two_sided(hi, n) < level:  # nu = 1 at 95%: 12.7; far tails double quickly
            hi *= 2
        for _ in range(200):  # bisection to the float's resolution
            mid = (lo + hi) / 2
            if mid in (lo, hi):
                break
            lo, hi = (mid, hi) if t_two_sided(mid, n) < level else (lo, mid)
        _CACHE[key] = (lo + hi) / 2
    return _CACHE[key]


def half_width(std: float | None, n: int | None, level: float = LEVEL) -> float | None:
    """Half-width of the t interval of a mean of n values with sample std `std` (None: n < 2)."""
    if std is None or n is None or n < 2 or (isinstance(std, float) and math.isnan(std)):
        return None
    return t_quantile(n - 1, level) * std / math.sqrt(n)


def interval(mean: float | None, std: float | None, n: int | None,
             level: float = LEVEL) -> tuple[float | None, float | None]:
    h = half_width(std, n, level)
    if mean is None or h is None:
        return None, None
    return mean - h, mean + h


def add_intervals(t: pa.Table, stem: str, n_col: str) -> pa.Table:
    """`t` with `<stem>_ci_low` and `<stem>_ci_high` (the 95% t interval of `<stem>_mean`, from
    `<stem>_std` and `n_col`), placed right after `<stem>_std`."""
    means, stds, ns = (t[c].to_pylist() for c in (f"{stem}_mean", f"{stem}_std", n_col))
    lows, highs = zip(*(interval(m, s, n) for m, s, n in zip(means, stds, ns))) if t.num_rows else ((), ())
    at = t.schema.get_field_index(f"{stem}_std") + 1
    t = t.add_column(at, f"{stem}_ci_low", pa.array(list(lows), pa.float64()))
    return t.add_column(at + 1, f"{stem}_ci_high", pa.array(list(highs), pa.float64()))


def welch(mean_a: float, std_a: float | None, n_a: int, mean_b: float, std_b: float | None, n_b: int,
          level: float = LEVEL) -> tuple[float, float | None, float | None]:
    """(a - b, interval low, interval high): Welch's t interval of a difference of two means
    whose spreads may differ. A side with no spread (one value, or a published number without
    one) adds none: the interval is then the other side's alone. (None, None) when neither has
    a spread."""
    d = mean_a - mean_b
    parts = [(s * s / n, n) for s, n in ((std_a, n_a), (std_b, n_b))
             if s is not None and n is not None and n >= 2 and not math.isnan(s)]
    if not parts:
        return d, None, None
    var = sum(v for v, _ in parts)
    if var == 0:
        return d, d, d
    # Welch-Satterthwaite degrees of freedom
    nu = var * var / sum(v * v / (n - 1) for v, n in parts)
    h = t_quantile(nu, level) * math.sqrt(var)
    return d, d - h, d + h


def paired(diffs: list[float], level: float = LEVEL) -> tuple[float | None, float | None, float | None, int]:
    """(mean difference, interval low, high, n pairs): the paired t interval of per-pair
    differences (same replicate seed on both sides, so the init's share of the noise cancels)."""
    n = len(diffs)
    if n == 0:
        return None, None, None, 0
    m = sum(diffs) / n
    if n < 2:
        return m, None, None, n
    s = math.sqrt(sum((x - m) ** 2 for x in diffs) / (n - 1))
    lo, hi = interval(m, s, n, level)
    return m, lo, hi, n


def column_interval(t: pa.Table, mean: str, std: str, n: str) -> tuple[pa.Array, pa.Array]:
    """Low and high arrays for a table whose columns do not follow the `<stem>_` naming."""
    rows = [interval(m, s, k) for m, s, k in zip(t[mean].to_pylist(), t[std].to_pylist(), t[n].to_pylist())]
    return (pa.array([r[0] for r in rows], pa.float64()), pa.array([r[1] for r in rows], pa.float64()))


__all__ = ["t_two_sided", "t_quantile", "half_width", "interval", "add_intervals", "welch", "paired",
           "column_interval"]
