"""Facility location as a greedy pick order (orders, ties, budget: robustcore.scores.greedy).

Submodular function as in submodlib, on the penultimate features with
``sim(i, j) = (1 + cos(x_i, x_j)) / 2`` (:func:`robustcore.scores.greedy.cosine_rows`; why this
similarity: :mod:`robustcore.scores.greedy`).
``facility_location``: ``F(S) = sum_i max_{j in S} sim(i, j)``; exact lazy greedy with the
re-evaluations batched and vectorised (stale bounds are re-evaluated until no stale bound reaches
the best fresh gain, so the result equals the plain greedy including ties). Column ``gain``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from robustcore.scores.base import ScoreInputs, register
from robustcore.scores.greedy import (
    common,
    cosine_rows,
    features,
    labelled_probe,
    lazy_facility_location,
    run,
    steps,
)


@register(
    "facility_location", natural="low", needs=("probe",), kind="order", per_class=True, budget=None
)
def facility_location(
    inputs: ScoreInputs, *, seed: int, per_class: bool, budget: float | None
) -> pd.DataFrame:
    """Facility location on (1 + cos) / 2 of penultimate features, exact lazy greedy order."""
    seed, per_class, budget = common("facility_location", seed, per_class, budget)
    probe = labelled_probe("facility_location", inputs)

    def solve(rows: np.ndarray, label: int | None):
        sim = cosine_rows(features(probe, rows))
        order, gain, _, _ = lazy_facility_location(sim, len(rows), steps(len(rows), budget))
        return order, {"gain": gain}

    return run(inputs, per_class, solve)


__all__ = ["facility_location"]
