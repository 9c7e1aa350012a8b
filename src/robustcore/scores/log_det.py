"""Log-determinant as a greedy pick order (orders, ties, budget: robustcore.scores.greedy).

Submodular function as in submodlib, on the penultimate features with
``sim(i, j) = (1 + cos(x_i, x_j)) / 2`` (:func:`robustcore.scores.greedy.cosine_rows`; why this
similarity: :mod:`robustcore.scores.greedy`).
``log_det``: ``F(S) = log det(K_S + eps I)``, gain
``log(K_ee + eps - k_eS^T (K_S + eps I)^-1 k_eS)`` maintained for all candidates by an incremental
Cholesky factor (Chen, Zhang & Zhou 2018), O(n |S|) per step; ``eps`` default 1.0 (submodlib's
``lambdaVal`` examples). DeepCore's LogDeterminant gain returns ``k_eS^T K_S^+ k_eS`` (the explained
part, without ``K_ee -`` and the log) and maximises it, so it picks the most redundant point. Column
``gain``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from robustcore.scores.base import ScoreInputs, register
from robustcore.scores.greedy import (
    Cholesky,
    best,
    common,
    complete,
    cosine_rows,
    diagonal,
    features,
    labelled_probe,
    number,
    run,
    steps,
)


@register(
    "log_det",
    natural="low",
    needs=("probe",),
    kind="order",
    per_class=True,
    budget=None,
    eps=1.0,
)
def log_det(
    inputs: ScoreInputs, *, seed: int, per_class: bool, budget: float | None, eps: float
) -> pd.DataFrame:
    """Log-determinant log det(K_S + eps I) of (1 + cos) / 2 features, incremental Cholesky."""
    seed, per_class, budget = common("log_det", seed, per_class, budget)
    eps = number("log_det", "eps", eps, minimum=0.0, strict=True)
    probe = labelled_probe("log_det", inputs)

    def solve(rows: np.ndarray, label: int | None):
        sim = cosine_rows(features(probe, rows))
        n = len(rows)
        k = steps(n, budget)
        chol = Cholesky(sim.row, diagonal(sim), eps, k)
        picked = np.zeros(n, dtype=bool)
        gain = np.full(n, np.nan)
        order: list[int] = []
        for _ in range(k):
            j = best(chol.resid, ~picked)
            gain[j] = math.log(max(float(chol.resid[j]), chol.floor))
            chol.add(j)
            picked[j] = True
            order.append(j)
        return complete(order, chol.resid, picked), {"gain": gain}

    return run(inputs, per_class, solve)


__all__ = ["log_det"]
