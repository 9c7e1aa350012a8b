"""Graph cut as a greedy pick order (orders, ties, budget: robustcore.scores.greedy).

Submodular function as in submodlib, on the penultimate features with
``sim(i, j) = (1 + cos(x_i, x_j)) / 2`` (:func:`robustcore.scores.greedy.cosine_rows`; why this
similarity: :mod:`robustcore.scores.greedy`).
``graph_cut``: ``F(S) = sum_{i in V, j in S} sim(i, j) - lam * sum_{i, j in S} sim(i, j)`` (ordered
pairs, diagonal included), gain ``colsum_e - lam * (2 sum_{j in S} sim(j, e) + sim(e, e))``.
``lam`` default 1.0: DeepCore's default (DeepCore puts its ``lam`` on the first term, equivalent to
ours ``= 1 / lam_DeepCore``); submodlib notes F is monotone only for ``lam < 0.5``, the greedy order
is defined either way. Column ``gain``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from robustcore.scores.base import ScoreInputs, register
from robustcore.scores.greedy import (
    best,
    common,
    complete,
    cosine_rows,
    diagonal,
    features,
    labelled_probe,
    number,
    row_sums,
    run,
    steps,
)


@register(
    "graph_cut",
    natural="low",
    needs=("probe",),
    kind="order",
    per_class=True,
    budget=None,
    lam=1.0,
)
def graph_cut(
    inputs: ScoreInputs, *, seed: int, per_class: bool, budget: float | None, lam: float
) -> pd.DataFrame:
    """Graph cut sum_{V,S} sim - lam sum_{S,S} sim on (1 + cos) / 2 features, greedy order."""
    seed, per_class, budget = common("graph_cut", seed, per_class, budget)
    lam = number("graph_cut", "lam", lam, minimum=0.0, strict=False)
    probe = labelled_probe("graph_cut", inputs)

    def solve(rows: np.ndarray, label: int | None):
        sim = cosine_rows(features(probe, rows))
        n = len(rows)
        colsum = row_sums(sim)
        diag = diagonal(sim)
        acc = np.zeros(n)  # sum_{j in S} sim(j, e)
        picked = np.zeros(n, dtype=bool)
        gain = np.full(n, np.nan)
        order: list[int] = []
        for _ in range(steps(n, budget)):
            current = colsum - lam * (2.0 * acc + diag)
            j = best(current, ~picked)
            gain[j] = current[j]
            acc += sim.row(j)
            picked[j] = True
            order.append(j)
        return complete(order, colsum - lam * (2.0 * acc + diag), picked), {"gain": gain}

    return run(inputs, per_class, solve)


__all__ = ["graph_cut"]
