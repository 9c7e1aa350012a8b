"""CRAIG as a greedy pick order and its coreset weights (orders, ties, budget: scores.greedy).

``craig`` (Mirzasoleiman, Bilmes & Leskovec 2020): facility location ``F(S) = sum_i max_{j in S} (C
- ||g_i - g_j||)`` over the last-layer gradient embeddings ``g = (p - y) (x) [h, 1]``
(probe.grad_embedding; distances from the factorised inner product ``<g_i, g_j> = <r_i, r_j> <h~_i,
h~_j>``, never materialising ``g``). ``C`` = the largest distance in the class (the paper's phantom
element at distance ``C`` from every point; with ``per_class=False`` the largest over all classes);
any ``C >= max d`` gives the same order within a class. As in the paper, similarities are per class:
with ``per_class=False`` samples of different classes have similarity 0 (block-diagonal, as
DeepCore), so the global greedy is the merge of the per-class sequences by marginal gain. Columns
``gain`` (marginal gain at the pick) and ``weight_at_pick``: the number of group samples whose
nearest medoid became this sample when it was picked. CRAIG's training weight ``gamma_j`` (how many
samples have ``j`` as their nearest medoid in the final set) depends on the prefix length, so it
cannot be stored once for every prefix; :func:`craig_weights` computes it for an actual coreset.
DeepCore's gradients were those of CE of ``softmax(logits)`` (a double softmax) until its commit
ca3fb21; they are now those of the batch-averaged loss, ``(p - y) / B`` with ``B`` the size of
the sample's selection batch (larger for a class's last, partial batch). Ours are each sample's
own CE gradients ``p - y``.
"""

from __future__ import annotations

import heapq

import numpy as np
import pandas as pd

from robustcore.probe import ProbeData
from robustcore.scores.base import ScoreInputs, frame, per_class_rows, register
from robustcore.scores.greedy import (
    augmented,
    common,
    distance_rows,
    labelled_probe,
    lazy_facility_location,
    residual,
    steps,
)


def _craig_class(probe: ProbeData, rows: np.ndarray, k: int):
    """CRAIG on one class: facility location on C - |g_i - g_j| of the gradient embeddings."""
    r = residual(probe, rows)
    h = augmented(probe, rows)
    sq = (r * r).sum(axis=1) * (h * h).sum(axis=1)
    dist = distance_rows(lambda idx: (r[idx] @ r.T) * (h[idx] @ h.T), sq)
    top = max(float(block.max()) for _, block in dist.blocks())
    return (*lazy_facility_location(lambda idx: top - dist(idx), len(rows), k), top)


@register("craig", natural="low", needs=("probe",), kind="order", per_class=True, budget=None)
def craig(inputs: ScoreInputs, *, seed: int, per_class: bool, budget: float | None) -> pd.DataFrame:
    """CRAIG: greedy facility location (medoids) on per-class last-layer gradient distances."""
    seed, per_class, budget = common("craig", seed, per_class, budget)
    probe = labelled_probe("craig", inputs)
    n = len(inputs.index)
    columns = {"gain": np.full(n, np.nan), "weight_at_pick": np.full(n, np.nan)}
    score = np.empty(n, dtype=np.float64)
    sequences, tops = [], []
    for rows in per_class_rows(inputs.labels).values():
        order, gain, weight, key, top = _craig_class(probe, rows, steps(len(rows), budget))
        columns["gain"][rows] = gain
        columns["weight_at_pick"][rows] = weight
        score[rows[order]] = np.arange(len(rows), dtype=np.float64)
        sequences.append((rows[order], key[order]))
        tops.append(top)
    if not per_class:
        # Block-diagonal similarity with one phantom distance C = the largest distance of any
        # class: only a class's first gain depends on C (n_c * C - sum_i d_ie), so shift it from
        # the class's own C. The global greedy then interleaves the class sequences by gain (with a
        # budget, a class's samples after its greedy prefix carry their gain at the stop).
        for (members, gains), top in zip(sequences, tops, strict=True):
            gains[0] += len(members) * (max(tops) - top)
            columns["gain"][members[0]] = gains[0]
        heap = [(-float(g[0]), int(m[0]), c, 0) for c, (m, g) in enumerate(sequences)]
        heapq.heapify(heap)
        position = 0
        while heap:
            _, member, c, at = heapq.heappop(heap)
            score[member] = position
            position += 1
            members, gains = sequences[c]
            if at + 1 < len(members):
                heapq.heappush(heap, (-float(gains[at + 1]), int(members[at + 1]), c, at + 1))
    return frame(inputs, score, **columns)


def craig_weights(probe: ProbeData, chosen: np.ndarray) -> np.ndarray:
    """CRAIG's gamma: per chosen row, the same-class samples whose nearest chosen medoid it is."""
    chosen = np.asarray(chosen, dtype=np.int64)
    weights = np.zeros(len(chosen))
    for label, rows in per_class_rows(probe.labels).items():
        mine = np.flatnonzero(probe.labels[chosen] == label)
        if mine.size == 0:
            continue
        r, h = residual(probe, rows), augmented(probe, rows)
        rc, hc = residual(probe, chosen[mine]), augmented(probe, chosen[mine])
        sq = (r * r).sum(axis=1) * (h * h).sum(axis=1)
        sqc = (rc * rc).sum(axis=1) * (hc * hc).sum(axis=1)
        d2 = sq[:, None] + sqc[None, :] - 2.0 * (r @ rc.T) * (h @ hc.T)
        nearest = np.argmin(d2, axis=1)  # ties: the first chosen
        weights[mine] = np.bincount(nearest, minlength=mine.size)
    return weights


__all__ = ["craig", "craig_weights"]
