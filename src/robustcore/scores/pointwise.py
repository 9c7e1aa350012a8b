"""Per-sample baseline scores: uncertainty, forgetting, EL2N and GraNd.

The per-sample baselines CAL and DeepFool are :mod:`robustcore.scores.cal` and
:mod:`robustcore.scores.deepfool`; the next paragraph holds for all three modules.

Each method follows its original paper (not DeepCore where DeepCore departs from it) and
declares the end of the ranking the paper keeps (`natural`). Every computation is vectorized:
loops run over row blocks, classes, batches, DeepFool iterations or candidate classes, never
over single samples.

What DeepCore (Guo et al. 2022) does differently, where it matters:

- Uncertainty (LeastConfidence/Entropy/Margin): DeepCore's scores are "low = uncertain"
  (max *logit*, Σ p log p, p1 − p2) but without class balance it keeps the *highest* scores,
  i.e. the most confident samples. Ours score uncertainty so that the paper's end is explicit:
  least confidence and entropy keep high, margin keeps low, in every case.
- Forgetting: DeepCore counts events on training minibatches and gives never-learned samples
  0 events (they rank with the unforgettable); Toneva et al. count them as forgotten infinitely
  often. Ours gives them +inf.
- GraNd: DeepCore took the cross-entropy of softmax(logits) (a double softmax) until its commit
  ca3fb21 (January 2023). Its current code takes the gradient of the batch-*averaged* loss
  (``nn.CrossEntropyLoss()`` with mean reduction in earlytrain.py), so each sample's gradient is
  divided by its batch's size, which inflates the last, partial batch of each class 1 / (batch
  fraction) times (CIFAR-10, selection batch 256: 80 samples, 3.2×). Ours uses each sample's own
  last-layer loss gradient.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from robustcore.io import InputError
from robustcore.scores.base import ScoreInputs, blocks, checked_probe, frame, log_probs, register
from robustcore.scores.dynamics import checked_window, window_matrix

PROBE_BLOCK = 65536  # probe rows processed at once (bounds the float64 temporaries)


# -------------------------------------------------------------------------------- uncertainty
@register("least_confidence", natural="high", needs=("probe",))
def least_confidence(inputs: ScoreInputs, *, seed: int) -> pd.DataFrame:
    """Least confidence (Settles 2009; Coleman et al. 2020): 1 − max_c p_c (keep the highest)."""
    probe = checked_probe(inputs, "least_confidence")
    score = np.empty(len(inputs.index))
    for rows in blocks(len(score), PROBE_BLOCK):
        score[rows] = 1.0 - np.exp(log_probs(probe.logits[rows]).max(axis=1))
    return frame(inputs, score)


@register("entropy", natural="high", needs=("probe",))
def entropy(inputs: ScoreInputs, *, seed: int) -> pd.DataFrame:
    """Predictive entropy (Settles 2009; Coleman et al. 2020): −Σ_c p_c log p_c (keep highest)."""
    probe = checked_probe(inputs, "entropy")
    score = np.empty(len(inputs.index))
    for rows in blocks(len(score), PROBE_BLOCK):
        log_p = log_probs(probe.logits[rows])
        score[rows] = -(np.exp(log_p) * log_p).sum(axis=1)
    return frame(inputs, score)


@register("margin", natural="low", needs=("probe",))
def margin(inputs: ScoreInputs, *, seed: int) -> pd.DataFrame:
    """Margin sampling (Scheffer et al. 2001): p_top1 − p_top2; the smallest is most uncertain."""
    probe = checked_probe(inputs, "margin")
    if probe.logits.shape[1] < 2:
        raise InputError("score method 'margin' needs at least 2 classes")
    score = np.empty(len(inputs.index))
    for rows in blocks(len(score), PROBE_BLOCK):
        top2 = np.partition(np.exp(log_probs(probe.logits[rows])), -2, axis=1)[:, -2:]
        score[rows] = top2[:, 1] - top2[:, 0]
    return frame(inputs, score)


# ---------------------------------------------------------------------------- training dynamics
@register("forgetting", natural="high", needs=("dynamics",), first_epoch=1, last_epoch=None)
def forgetting(
    inputs: ScoreInputs, *, seed: int, first_epoch: int, last_epoch: int | None
) -> pd.DataFrame:
    """Toneva et al. 2019: forgetting events (correct → incorrect) per sample; never learned = inf.

    Events are counted between consecutive epochs of the window on the per-epoch eval-mode
    snapshots (Toneva count them at every minibatch presentation during training, a finer
    sampling of the same trajectory). A sample never classified correctly in the window is
    "forgotten infinitely often" (Toneva et al.), so it ranks above every finite count.
    """
    window = checked_window(inputs, "forgetting", first_epoch, last_epoch)
    correct = window_matrix(inputs, "correct", window).astype(bool)
    events = (correct[:, :-1] & ~correct[:, 1:]).sum(axis=1).astype(np.int64)
    learned = correct.any(axis=1)
    score = np.where(learned, events.astype(np.float64), np.inf)
    return frame(inputs, score, forgetting_events=events, ever_learned=learned)


@register("el2n", natural="high", needs=("dynamics",), first_epoch=1, last_epoch=None)
def el2n(
    inputs: ScoreInputs, *, seed: int, first_epoch: int, last_epoch: int | None
) -> pd.DataFrame:
    """Paul et al. 2021: EL2N = ‖softmax − onehot(y)‖₂, averaged over an epoch window.

    The paper scores early in training (e.g. epoch 20 of 200 on CIFAR-10) and averages over
    ~10 independently initialised runs. Reproduce it with first_epoch = last_epoch = t and
    proxies trained with different seeds, then average the per-seed score files by index.
    The default window (all epochs) is a trajectory average, not the paper's setting.
    """
    window = checked_window(inputs, "el2n", first_epoch, last_epoch)
    values = window_matrix(inputs, "el2n", window).astype(np.float64)
    return frame(inputs, values.mean(axis=1), n_epochs=np.full(len(values), len(window)))


@register("grand", natural="high", needs=("dynamics",), first_epoch=1, last_epoch=None)
def grand(
    inputs: ScoreInputs, *, seed: int, first_epoch: int, last_epoch: int | None
) -> pd.DataFrame:
    """GraNd (Paul et al. 2021), last layer: mean ‖∇_(W,b) loss‖ of the head over an epoch window.

    This is the last-layer GraNd (as DeepCore): the gradient of the cross-entropy with respect to
    the classifier head only, ‖p − y‖·‖[h, 1]‖. The paper's GraNd uses the gradient of all
    parameters, which needs per-sample gradients through every layer. As for EL2N, the paper
    scores an early epoch averaged over several initialisations (window + replicate seeds).
    """
    window = checked_window(inputs, "grand", first_epoch, last_epoch)
    values = window_matrix(inputs, "grad_norm_last", window).astype(np.float64)
    return frame(inputs, values.mean(axis=1), n_epochs=np.full(len(values), len(window)))
