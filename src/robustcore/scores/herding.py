"""Herding as a greedy pick order (orders, ties, budget: robustcore.scores.greedy).

``herding`` (Welling 2009; Chen, Welling & Smola 2010; the iCaRL form used for coresets), on the
penultimate features ``x``: pick ``argmin_x || mu - (s + x) / (t + 1) ||`` where ``mu`` is the group
mean and ``s`` the sum of the ``t`` picked points, i.e. the point that brings the running mean of
the picked set closest to the mean. DeepCore takes the *argmax* of this distance (pushes the mean
away: a bug). With a linear kernel and equal norms this is Chen et al.'s kernel herding
``argmax <w_t, x>``; in general the two differ by the ``||x||^2`` term. Column ``mean_distance``:
``||mu - mean(S)||`` right after the pick.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from robustcore.scores.base import ScoreInputs, register
from robustcore.scores.greedy import (
    Rows,
    best,
    common,
    complete,
    features,
    labelled_probe,
    run,
    steps,
)


@register("herding", natural="low", needs=("probe",), kind="order", per_class=True, budget=None)
def herding(
    inputs: ScoreInputs, *, seed: int, per_class: bool, budget: float | None
) -> pd.DataFrame:
    """Herding: each pick brings the running mean of the picked features closest to the mean."""
    seed, per_class, budget = common("herding", seed, per_class, budget)
    probe = labelled_probe("herding", inputs)

    def solve(rows: np.ndarray, label: int | None):
        x = features(probe, rows)
        n = len(rows)
        gram = Rows(lambda idx: x[idx] @ x.T, n)
        mu = x.mean(axis=0)
        m = x @ mu  # <mu, x_i>
        sq = np.einsum("ij,ij->i", x, x)
        mu_sq = float(mu @ mu)
        acc = np.zeros(n)  # <s, x_i>, s = sum of the picked points
        s_mu = s_sq = 0.0  # <s, mu>, |s|^2
        picked = np.zeros(n, dtype=bool)
        mean_distance = np.full(n, np.nan)
        order: list[int] = []
        k = steps(n, budget)
        for t in range(k):
            # |(t+1) mu - s - x_i|^2 up to a constant of the step
            crit = sq - 2.0 * ((t + 1) * m - acc)
            j = best(-crit, ~picked)
            s_sq += 2.0 * acc[j] + sq[j]
            s_mu += m[j]
            size = t + 1
            d2 = size * size * mu_sq - 2.0 * size * s_mu + s_sq
            mean_distance[j] = math.sqrt(max(d2, 0.0)) / size
            picked[j] = True
            order.append(j)
            acc += gram.row(j)
        key = -(sq - 2.0 * ((k + 1) * m - acc))
        return complete(order, key, picked), {"mean_distance": mean_distance}

    return run(inputs, per_class, solve)


__all__ = ["herding"]
