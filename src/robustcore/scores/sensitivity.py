"""Adversarial Sensitivity Scoring: ISEF, FGSM-CS and PSS from the proxy's Sparse-FGSM table.

All three read only the sensitivity table (``robustcore.sensitivity``): per sample the clean
softmax p⁰ and prediction, and pᵏ, ŷᵏ for each k in the table (the paper: k ∈ {1, 4, 16, 64}).
Per-sample components are computed block by block of samples (float64 within a block), so the
N × (1 + K) × C probabilities are never in memory at once; ISEF's min-max comes at the end.

Natural end = "high" for all three. The paper builds "(1) Top-ranked subsets, consisting of
samples identified as highly vulnerable or uncertain, and (2) Bottom-ranked subsets, consisting
of samples deemed robust or confident" (§3.2); its scores grow with vulnerability: "A higher
composite score S indicates greater model fragility" (FGSM-CS, §2.2.2), "A higher PSS indicates
that the image is more fragile under small changes and thus likely resides near the decision
boundary. These images are prioritized in the coreset" (§2.2.3), and ISEF "prioritize[s] samples
near decision boundaries" (§2.2.1). The method it proposes keeps the top: "Our results
demonstrate the advantage of focusing on the *top* samples" (§1). So the top variant keeps the
highest scores; the bottom variant (which the paper reports winning at small fractions) is the
same score taken from the low end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from numbers import Real

import numpy as np
import pandas as pd

from robustcore.io import InputError
from robustcore.scores.base import ScoreInputs, frame, register
from robustcore.sensitivity import SensitivityTable


def checked_table(inputs: ScoreInputs) -> tuple[SensitivityTable, np.ndarray]:
    """The Sparse-FGSM table and each input sample's row in it; checks samples and labels."""
    table = inputs.sensitivity
    if table is None or len(table) == 0:
        raise InputError("sensitivity scores need the Sparse-FGSM table (sparse_fgsm.parquet)")
    rows = np.searchsorted(table.index, inputs.index).clip(max=len(table) - 1)
    missing = inputs.index[table.index[rows] != inputs.index]
    if len(missing):
        raise InputError(
            f"sensitivity table: no row for {len(missing)} of the {len(inputs.index)} samples, "
            f"e.g. index {missing[:5].tolist()}"
        )
    if not np.array_equal(table.labels[rows], inputs.labels):
        raise InputError("sensitivity table: labels disagree with the dataset's train labels")
    return table, rows


def blockwise(
    table: SensitivityTable,
    rows: np.ndarray,
    components: Callable[[np.ndarray], tuple[np.ndarray, ...]],
    levels: Sequence[int] | None = None,
) -> tuple[np.ndarray, ...]:
    """Per-sample `components(float64 probs (b, L, C))`, block by block, at table rows `rows`.

    L: the table's `levels` (k values) read, default all 1 + K.
    """
    parts: list[tuple[slice, tuple[np.ndarray, ...]]] = [
        (block, components(probs.astype(np.float64))) for block, probs in table.prob_blocks(levels)
    ]
    columns = [np.empty(len(table)) for _ in parts[0][1]]
    for block, values in parts:
        for column, value in zip(columns, values, strict=True):
            column[block] = value
    return tuple(column[rows] for column in columns)


def entropy10(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in base 10 over the last axis (0·log 0 = 0)."""
    safe = np.where(probs > 0, probs, 1.0)
    return -(probs * np.log10(safe)).sum(axis=-1)


def minmax(values: np.ndarray) -> np.ndarray:
    """Min-max normalisation to [0, 1] over all samples; a constant column becomes 0."""
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def _check_alpha(alpha: float) -> float:
    """alpha must be a number in [0, 1]."""
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0 <= alpha <= 1:
        raise InputError(f"score method 'isef': parameter 'alpha' must be in [0, 1], got {alpha!r}")
    return float(alpha)


def _check_weights(weights: Sequence[float]) -> np.ndarray:
    """weights must be 3 non-negative numbers summing to 1."""
    ok = (
        isinstance(weights, Sequence | np.ndarray)
        and not isinstance(weights, str)
        and len(weights) == 3
        and all(
            isinstance(w, Real) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
            for w in weights
        )
    )
    if not ok or abs(sum(weights) - 1.0) > 1e-9:
        raise InputError(
            "score method 'fgsm_cs': parameter 'weights' must be 3 non-negative numbers "
            f"[w_adv, w_unc, w_rob] summing to 1, got {weights!r}"
        )
    return np.asarray(weights, dtype=np.float64)


@register("isef", natural="high", needs=("sensitivity",), alpha=0.5)
def isef(inputs: ScoreInputs, *, seed: int, alpha: float) -> pd.DataFrame:
    """ISEF: α·minmax(S_inv) + (1 − α)·minmax(S_ent) (keep the highest: near the boundary).

    S_inv = 1 if misclassified clean, else 1/k_min for the smallest k in the table that
    misclassifies, else 0; S_ent = clean softmax entropy, base 10 (as the paper writes it).
    """
    alpha = _check_alpha(alpha)
    table, rows = checked_table(inputs)
    ks = table.ks.astype(np.float64)
    wrong = table.preds[rows] != inputs.labels[:, None]
    first = wrong[:, 1:].argmax(axis=1)  # the smallest misclassifying k (ks are ascending)
    s_inv = np.where(wrong[:, 0], 1.0, np.where(wrong[:, 1:].any(axis=1), 1.0 / ks[first], 0.0))
    (s_ent,) = blockwise(table, rows, lambda clean: (entropy10(clean[:, 0]),), levels=[0])
    score = alpha * minmax(s_inv) + (1 - alpha) * minmax(s_ent)
    return frame(inputs, score, s_inv=s_inv, s_ent=s_ent)


@register("fgsm_cs", natural="high", needs=("sensitivity",), weights=(0.5, 0.3, 0.2))
def fgsm_cs(inputs: ScoreInputs, *, seed: int, weights: Sequence[float]) -> pd.DataFrame:
    """FGSM-CS: w_adv·S_adv + w_unc·S_unc + w_rob·S_rob (keep the highest: most fragile).

    S_adv = Σ_k ‖p⁰ − pᵏ‖₁ / k; S_unc = the largest softmax entropy over the clean input and every
    k, in base 10 (Eq. 5 leaves the base open; base 10 matches ISEF's entropy and keeps S_unc in
    [0, 1] for 10 classes, like S_rob); S_rob = 1 if some k's prediction differs from the true
    label (Eq. 6 as written: whatever the clean prediction was), else 0.
    """
    w_adv, w_unc, w_rob = _check_weights(weights)
    table, rows = checked_table(inputs)
    ks = table.ks.astype(np.float64)

    def components(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """S_adv and S_unc of a block."""
        shift = np.abs(probs[:, :1] - probs[:, 1:]).sum(axis=2)  # (b, K) ‖p⁰ − pᵏ‖₁
        return (shift / ks).sum(axis=1), entropy10(probs).max(axis=1)

    s_adv, s_unc = blockwise(table, rows, components)
    s_rob = (table.preds[rows, 1:] != inputs.labels[:, None]).any(axis=1).astype(np.float64)
    score = w_adv * s_adv + w_unc * s_unc + w_rob * s_rob
    return frame(inputs, score, s_adv=s_adv, s_unc=s_unc, s_rob=s_rob)


@register("pss", natural="high", needs=("sensitivity",))
def pss(inputs: ScoreInputs, *, seed: int) -> pd.DataFrame:
    """PSS: Σ_k ‖pᵏ − p⁰‖₂ / (log₂ k + 1) (keep the highest: most fragile, near the boundary).

    The weight is Eq. 7's 1/(log₂(k) + 1); the prose's "log₂(k+1)" disagrees, the equation wins.
    """
    table, rows = checked_table(inputs)
    weight = np.log2(table.ks.astype(np.float64)) + 1.0

    def component(probs: np.ndarray) -> tuple[np.ndarray]:
        """The score of a block."""
        shift = np.linalg.norm(probs[:, 1:] - probs[:, :1], axis=2)  # (b, K) ‖pᵏ − p⁰‖₂
        return ((shift / weight).sum(axis=1),)

    (score,) = blockwise(table, rows, component)
    return frame(inputs, score)
