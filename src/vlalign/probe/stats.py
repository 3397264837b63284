"""Correlations with bootstrap confidence intervals, for a handful of points (one per encoder).

With 10-20 encoders a correlation is uncertain; the percentile bootstrap over encoders (resample
points with replacement, recompute) says how uncertain, without assuming normality. The
difference of two correlations with the same x gets a paired bootstrap, which is what "alignment
tracks k-NN more than linear probing" needs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Statistic = Callable[[np.ndarray, np.ndarray], float]


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r (nan when either side is constant)."""
    x, y = np.asarray(x, float) - np.mean(x), np.asarray(y, float) - np.mean(y)
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their average rank."""
    values = np.asarray(values, float)
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the (tie-averaged) ranks."""
    return pearson(_ranks(x), _ranks(y))


def bootstrap_ci(statistic: Callable[[np.ndarray], float], n: int, samples: int = 2000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``statistic(indices)`` over resampled index sets of size ``n``;
    resamples where the statistic is undefined (nan) are dropped."""
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(samples)])
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def correlation(x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Pearson and Spearman with 95% bootstrap intervals."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    out = {"n": float(len(x))}
    for name, fn in (("pearson", pearson), ("spearman", spearman)):
        out[name] = fn(x, y)
        out[f"{name}_low"], out[f"{name}_high"] = bootstrap_ci(
            lambda idx, fn=fn: fn(x[idx], y[idx]), len(x), seed=seed)
    return out


def paired_difference(x: np.ndarray, y1: np.ndarray, y2: np.ndarray, fn: Statistic = pearson,
                      seed: int = 0) -> dict[str, float]:
    """fn(x, y1) - fn(x, y2) and its paired 95% bootstrap interval."""
    x, y1, y2 = (np.asarray(v, float) for v in (x, y1, y2))
    low, high = bootstrap_ci(lambda idx: fn(x[idx], y1[idx]) - fn(x[idx], y2[idx]), len(x),
                             seed=seed)
    return {"difference": fn(x, y1) - fn(x, y2), "low": low, "high": high}
