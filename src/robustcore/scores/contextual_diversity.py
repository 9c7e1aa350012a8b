"""Contextual Diversity as a pick order (orders, ties, budget: robustcore.scores.greedy).

``contextual_diversity`` (Agarwal et al. 2020, CDAL core-set variant): k-center greedy with the
paper's contextual-diversity distance. For an image the paper keeps, per predicted class ``c``, the
entropy-weighted mean softmax ``P^c`` of the regions predicted ``c`` and defines
``d(I1, I2) = sum_c m^c_1 m^c_2 * [0.5 KL(P^c_1 || P^c_2) + 0.5 KL(P^c_2 || P^c_1)]``
(``m^c`` = class ``c`` is predicted in the image). An image classifier gives one region per image,
so ``P^c = p`` (the entropy weight normalises away) and the distance is the symmetric KL
``0.5 KL(p || q) + 0.5 KL(q || p) = 0.5 * sum_k (p_k - q_k)(log p_k - log q_k)`` between the two
predictive distributions, which is also DeepCore's metric (default). The indicator product would
set the distance of two samples with different predicted classes to 0; ``same_prediction_only=True``
applies it literally (then misclassified samples count as covered by any center of another
predicted class and come last; with ``per_class=False`` the order degenerates to one predicted
class at a time). Computed from log-softmax, so saturated softmax entries cannot give NaN (DeepCore
takes ``log(p / q)`` of float32 probabilities). Initial center as for kcenter. Column ``distance``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from robustcore.scores.base import ScoreInputs, register
from robustcore.scores.greedy import (
    choice,
    common,
    flag,
    k_center,
    labelled_probe,
    log_softmax,
    rng,
    run,
    steps,
)


@register(
    "contextual_diversity",
    natural="low",
    needs=("probe",),
    kind="order",
    per_class=True,
    budget=None,
    init="random",
    same_prediction_only=False,
)
def contextual_diversity(
    inputs: ScoreInputs,
    *,
    seed: int,
    per_class: bool,
    budget: float | None,
    init: str,
    same_prediction_only: bool,
) -> pd.DataFrame:
    """Contextual Diversity: k-center greedy under the symmetric KL of the predictions."""
    name = "contextual_diversity"
    seed, per_class, budget = common(name, seed, per_class, budget)
    init = choice(name, "init", init, ("random", "mean"))
    masked = flag(name, "same_prediction_only", same_prediction_only)
    probe = labelled_probe(name, inputs)

    def solve(rows: np.ndarray, label: int | None):
        log_p = log_softmax(probe.logits[rows].astype(np.float64))
        p = np.exp(log_p)
        pred = np.argmax(log_p, axis=1)
        n = len(rows)

        def row(j: int) -> np.ndarray:
            d = 0.5 * ((p - p[j]) * (log_p - log_p[j])).sum(axis=1)
            return np.where(pred == pred[j], d, 0.0) if masked else d

        if init == "random":
            first = int(rng(seed, label).integers(n))
        else:  # the sample closest (in this distance) to the group's mean prediction
            mean = p.mean(axis=0)
            first = int(np.argmin(0.5 * ((p - mean) * (log_p - np.log(mean))).sum(axis=1)))
        return k_center(row, n, first, steps(n, budget))

    return run(inputs, per_class, solve)


__all__ = ["contextual_diversity"]
