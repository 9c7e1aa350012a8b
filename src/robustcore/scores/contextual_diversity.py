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

Rows of the distance matrix are matrix products: with ``e_i = -sum_k p_ik log p_ik`` (the
entropy), ``2 d(i, j) = X_ij - e_i - e_j`` where ``X_ij = -(p_i . log p_j + p_j . log p_i) >= 0``
(two cross-entropies): one row costs two matrix-vector products ``log_p @ p_j`` and
``p @ log_p_j`` instead of an elementwise pass over ``n x C`` temporaries, a block of rows two
matrix products. The greedy takes one row per pick; the whole ``n x n`` matrix is precomputed
(block by block) only when the group has at most ``DENSE_LIMIT`` samples and the picks would cost
more than building it: ``k * C >= DENSE_WORK * n`` for ``k`` picks (measured at n = 5,000 on one
core, the matrix pays off from about k = n with 10 classes, 0.6 n with 100, 0.15 n with 1,000; so
with 10 classes the rows are computed per pick). The full order at n = 5,000 took 0.7 / 2.5 /
155 s elementwise and 0.28 / 0.37 / 4.1 s as products for C = 10 / 100 / 1,000. The expansion
cancels terms of size ``X_ij + e_i + e_j``: a value at or below ``1e-12`` of that size (the float64
rounding floor) counts as 0, the diagonal is exactly 0 and nothing is negative, so exact
duplicates tie at 0; elsewhere the rounding is absolute (about 1e-16 of the entropies), so small
distances carry a larger relative error than the elementwise form (on random data with 10 and 100
classes the pick order was the same).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from robustcore.scores.base import ScoreInputs, register
from robustcore.scores.greedy import (
    Rows,
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

_ZERO_FLOOR = 1e-12  # relative rounding floor of the expanded distance (as greedy's Gram floor)
DENSE_WORK = 64  # precompute the matrix when k picks x C classes >= DENSE_WORK x n (measured)


def symmetric_kl_rows(
    log_p: np.ndarray, pred: np.ndarray | None = None, k: int | None = None
) -> Callable[[int], np.ndarray]:
    """Row j of 0.5 KL(p_i || p_j) + 0.5 KL(p_j || p_i), i = 0..n-1, from log-probabilities.

    ``pred`` given: entries between different predicted classes are 0 (same_prediction_only).
    ``k``: the rows the caller will ask for (None = n), which decides whether the matrix is
    precomputed (see the module docstring).
    """
    n, classes = log_p.shape
    p = np.exp(log_p)
    entropy = -np.einsum("ij,ij->i", p, log_p)

    def func(idx: np.ndarray) -> np.ndarray:
        if len(idx) == 1:  # one row: two matrix-vector products
            d = (log_p @ p[idx[0]])[None, :]
            d += p @ log_p[idx[0]]
        else:
            d = p[idx] @ log_p.T
            d += log_p[idx] @ p.T
        np.negative(d, out=d)  # X_ij = -(p_i . log p_j + p_j . log p_i) >= 0
        ent = entropy[idx, None] + entropy[None, :]
        floor = d + ent  # size of the cancelling terms
        floor *= _ZERO_FLOOR
        d -= ent  # 2 d(i, j)
        d[d <= floor] = 0.0  # below the rounding floor (this also clips tiny negatives)
        d *= 0.5
        d[np.arange(len(idx)), idx] = 0.0
        if pred is not None:
            d[pred[idx, None] != pred[None, :]] = 0.0
        return d

    if (n if k is None else k) * classes >= DENSE_WORK * n:
        return Rows(func, n).row  # precomputed when n <= DENSE_LIMIT
    return lambda j: func(np.array([j]))[0]


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
        n = len(rows)
        k = steps(n, budget)
        dist = symmetric_kl_rows(log_p, np.argmax(log_p, axis=1) if masked else None, k)
        if init == "random":
            first = int(rng(seed, label).integers(n))
        else:  # the sample closest (in this distance) to the group's mean prediction
            p = np.exp(log_p)
            mean = p.mean(axis=0)
            with np.errstate(divide="ignore"):
                log_mean = np.log(mean)
            under = mean == 0  # every p_k underflowed: log of the mean from the log-probabilities
            log_mean[under] = logsumexp(log_p[:, under], axis=0) - np.log(n)
            first = int(np.argmin(0.5 * ((p - mean) * (log_p - log_mean)).sum(axis=1)))
        return k_center(dist, n, first, k)

    return run(inputs, per_class, solve)


__all__ = ["contextual_diversity", "symmetric_kl_rows"]
