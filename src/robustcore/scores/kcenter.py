"""k-Center-Greedy as a pick order (orders, ties, budget: robustcore.scores.greedy).

``kcenter`` (Sener & Savarese 2018, k-Center-Greedy), Euclidean distance on penultimate features:
repeatedly pick the point farthest from its nearest picked center. The paper starts from the
already-labelled pool; a coreset has none, so the first center is a seeded uniformly random sample
(``init="random"``, as DeepCore and the CDAL code do) or the point closest to the mean
(``init="mean"``). Column ``distance``: distance to the nearest earlier center at the pick (NaN for
the first). Squared distances below the float64 rounding floor of the Gram expansion
(``1e-12 * (|x_i|^2 + |x_j|^2)``) count as 0, so exact duplicates tie at 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from robustcore.scores.base import ScoreInputs, register
from robustcore.scores.greedy import (
    choice,
    common,
    distance_rows,
    features,
    k_center,
    labelled_probe,
    rng,
    run,
    steps,
)


@register(
    "kcenter",
    natural="low",
    needs=("probe",),
    kind="order",
    per_class=True,
    budget=None,
    init="random",
)
def kcenter(
    inputs: ScoreInputs, *, seed: int, per_class: bool, budget: float | None, init: str
) -> pd.DataFrame:
    """k-Center-Greedy on penultimate features: the point farthest from its nearest center next."""
    seed, per_class, budget = common("kcenter", seed, per_class, budget)
    init = choice("kcenter", "init", init, ("random", "mean"))
    probe = labelled_probe("kcenter", inputs)

    def solve(rows: np.ndarray, label: int | None):
        x = features(probe, rows)
        n = len(rows)
        sq = np.einsum("ij,ij->i", x, x)
        dist = distance_rows(lambda idx: x[idx] @ x.T, sq)
        if init == "random":
            first = int(rng(seed, label).integers(n))
        else:
            mu = x.mean(axis=0)
            first = int(np.argmin(sq - 2.0 * (x @ mu)))
        return k_center(dist.row, n, first, steps(n, budget))

    return run(inputs, per_class, solve)


__all__ = ["kcenter"]
