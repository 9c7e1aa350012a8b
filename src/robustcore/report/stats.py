"""Statistics over replicate seeds: mean ± sample std, and paired t intervals of differences."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as scipy_stats

from robustcore.io import InputError


def mean_std(values: np.ndarray) -> tuple[float, float, int]:
    """Mean, sample standard deviation (n − 1; NaN for one value) and count of finite values."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    n = int(finite.size)
    if n == 0:
        return math.nan, math.nan, 0
    std = float(finite.std(ddof=1)) if n > 1 else math.nan
    return float(finite.mean()), std, n


def paired_interval(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Mean of a − b over paired seeds with its two-sided Student-t confidence interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise InputError(f"paired_interval: a {a.shape} and b {b.shape} must be equal 1-D shapes")
    if not 0.0 < level < 1.0:
        raise InputError(f"paired_interval: level must be in (0, 1), got {level}")
    diff = a - b
    mean, std, n = mean_std(diff)
    if n < 2:
        # One pair gives a difference but no spread: no interval.
        return {"n": n, "mean": mean, "std": std, "low": math.nan, "high": math.nan, "t": math.nan}
    t = float(scipy_stats.t.ppf(0.5 + level / 2, n - 1))
    half = t * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "low": mean - half, "high": mean + half, "t": t}


def verdict(low: float, high: float, expect: str) -> str:
    """'supports', 'contradicts' or 'inconclusive': does the interval exclude 0 as expected?"""
    if expect not in ("greater", "less"):
        raise InputError(f"expect: expected 'greater' or 'less', got {expect!r}")
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if expect == "less":
        low, high = -high, -low
    if low > 0:
        return "supports"
    if high < 0:
        return "contradicts"
    return "inconclusive"
