"""CAL (Margatina et al. 2021): contrastive scores from the k nearest neighbours in feature space.

What DeepCore (Guo et al. 2022) does differently, where it matters:

- CAL: DeepCore uses a symmetric KL, neighbours from an ImageNet-pretrained ResNet-18 and keeps
  the *lowest* scores; Margatina et al. use KL(neighbour ‖ sample) over the model's own
  features and acquire the highest.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from robustcore.io import InputError
from robustcore.scores.base import (
    ScoreInputs,
    blocks,
    checked_probe,
    frame,
    int_param,
    log_probs,
    per_class_rows,
    register,
)

KNN_BLOCK_ROWS = 4096  # query rows per distance block
KNN_BLOCK_COLS = 8192  # reference rows per distance block (a block is ≤ 4096 × 8192 floats)


def nearest_neighbours(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (n×k) of each row's k nearest other rows (Euclidean), by blocked distances."""
    n, device = features.shape[0], features.device
    features = features - features.mean(dim=0, keepdim=True)  # smaller norms: less cancellation
    sq = (features * features).sum(dim=1)
    out = torch.empty((n, k), dtype=torch.int64, device=device)
    for rows in blocks(n, KNN_BLOCK_ROWS):
        query = features[rows]
        own = torch.arange(rows.start, rows.stop, device=device)
        best_d = torch.full((len(own), k), float("inf"), dtype=features.dtype, device=device)
        best_i = torch.full((len(own), k), -1, dtype=torch.int64, device=device)
        for cols in blocks(n, KNN_BLOCK_COLS):
            dist = sq[rows, None] + sq[None, cols] - 2.0 * (query @ features[cols].T)
            inside = (own >= cols.start) & (own < cols.stop)
            dist[inside.nonzero().squeeze(1), own[inside] - cols.start] = float("inf")
            cand_i = torch.arange(cols.start, cols.stop, device=device).expand(len(own), -1)
            best_d, pos = torch.cat([best_d, dist], 1).topk(k, dim=1, largest=False)
            best_i = torch.cat([best_i, cand_i], 1).gather(1, pos)
        out[rows] = best_i
    return out


def _cal_scores(
    features: np.ndarray, logits: np.ndarray, k: int, device: torch.device
) -> tuple[np.ndarray, int]:
    """Mean KL(p_neighbour ‖ p_sample) over each row's k nearest rows; (scores, neighbours used)."""
    n = len(features)
    k = min(k, n - 1)
    if k < 1:
        return np.zeros(n), 0
    features_t = torch.from_numpy(np.ascontiguousarray(features)).to(device)
    neighbours = nearest_neighbours(features_t, k).cpu().numpy()
    log_p = log_probs(logits)
    p = np.exp(log_p)
    neg_entropy = (p * log_p).sum(axis=1)  # Σ_c p log p of every row
    score = np.empty(n)
    for rows in blocks(n, KNN_BLOCK_ROWS):
        nb = neighbours[rows]
        # mean_j Σ_c p_jc (log p_jc − log p_ic) = mean_j Σ p_j log p_j − Σ_c (mean_j p_jc) log p_ic
        cross = (p[nb].mean(axis=1) * log_p[rows]).sum(axis=1)
        score[rows] = neg_entropy[nb].mean(axis=1) - cross
    return np.maximum(score, 0.0), k


@register("cal", natural="high", needs=("probe",), k=10, per_class=True)
def cal(inputs: ScoreInputs, *, seed: int, k: int, per_class: bool) -> pd.DataFrame:
    """CAL (Margatina et al. 2021): mean KL(p_neighbour ‖ p_sample) over the k nearest neighbours.

    Neighbours are the k nearest samples (excluding the sample itself) in the proxy's penultimate
    feature space (Euclidean), as CAL uses the model's own encoder. CAL acquires the highest
    scores: samples that look like their neighbours but get different predictions.
    per_class=True (default) searches neighbours within the sample's own labelled class: every
    training sample is labelled here, so a neighbour of another class disagrees because the
    labels differ, not because the model is unsure; within the class the KL measures the model
    treating same-class look-alikes differently. It also matches class-balanced selection and
    costs Σ n_c² instead of N² distances. per_class=False is the paper's class-agnostic search.
    A class with fewer than k + 1 samples uses all its other samples; a lone sample scores 0.
    """
    k = int_param("cal", "k", k, 1)
    if not isinstance(per_class, (bool, np.bool_)):
        raise InputError(f"score method 'cal': per_class must be true or false, got {per_class!r}")
    probe = checked_probe(inputs, "cal")
    features = probe.features.reshape(len(inputs.index), -1).astype(np.float32)
    groups = per_class_rows(inputs.labels) if per_class else {-1: np.arange(len(inputs.index))}
    score = np.zeros(len(inputs.index))
    used = np.zeros(len(inputs.index), dtype=np.int64)
    for rows in groups.values():
        score[rows], used[rows] = _cal_scores(features[rows], probe.logits[rows], k, inputs.device)
    return frame(inputs, score, n_neighbours=used)
