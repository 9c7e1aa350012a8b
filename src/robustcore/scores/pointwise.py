"""Per-sample baseline scores: uncertainty, forgetting, EL2N, GraNd, CAL and DeepFool.

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
- GraNd: DeepCore differentiates the cross-entropy of softmax(logits) (a double softmax), so its
  "gradient" is not the loss gradient; ours uses the true last-layer loss gradient.
- CAL: DeepCore uses a symmetric KL, neighbours from an ImageNet-pretrained ResNet-18 and keeps
  the *lowest* scores; Margatina et al. use KL(neighbour ‖ sample) over the model's own
  features and acquire the highest.
- DeepFool: DeepCore returns the squared norm of the accumulated perturbation without
  overshoot, and samples that never flip keep their partial perturbation (so they can rank as
  "close to the boundary"); ours returns ‖(1 + overshoot)·r‖ and +inf for non-flipping samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustcore.data import Loader
from robustcore.io import InputError
from robustcore.probe import ProbeData
from robustcore.runtime import eval_mode, frozen
from robustcore.scores.base import ScoreInputs, frame, per_class_rows, register
from robustcore.scores.dynamics import checked_window, window_matrix

PROBE_BLOCK = 65536  # probe rows processed at once (bounds the float64 temporaries)
KNN_BLOCK_ROWS = 4096  # query rows per distance block
KNN_BLOCK_COLS = 8192  # reference rows per distance block (a block is ≤ 4096 × 8192 floats)
DEEPFOOL_EPS = 1e-4  # added to each DeepFool step (as the reference code) so it crosses


# ------------------------------------------------------------------------------------ helpers
def _need(inputs: ScoreInputs, what: str, method: str) -> Any:
    """The declared input `what` of ScoreInputs, or a clear error if the workflow gave none."""
    value = getattr(inputs, what)
    if value is None:
        raise InputError(f"score method {method!r} needs {what!r} in its inputs, got None")
    return value


def _probe(inputs: ScoreInputs, method: str) -> ProbeData:
    """The probe, checked to hold exactly the samples of `inputs` in the same order."""
    probe = _need(inputs, "probe", method)
    if not np.array_equal(probe.index, inputs.index):
        raise InputError(f"score method {method!r}: the probe's sample indices differ from inputs")
    if probe.logits.ndim != 2 or probe.logits.shape[0] != len(inputs.index):
        raise InputError(f"score method {method!r}: probe logits must be N×C, one row per sample")
    return probe


def _int_param(method: str, key: str, value: Any, minimum: int) -> int:
    """An integer parameter ≥ minimum, or an InputError naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(
            f"score method {method!r}: {key} must be an integer ≥ {minimum}, got {value!r}"
        )
    return int(value)


def _blocks(n: int, size: int) -> Iterator[slice]:
    """Consecutive row slices of at most `size` rows covering 0..n."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _log_probs(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


# -------------------------------------------------------------------------------- uncertainty
@register("least_confidence", natural="high", needs=("probe",))
def least_confidence(inputs: ScoreInputs, *, seed: int) -> pd.DataFrame:
    """Least confidence (Settles 2009; Coleman et al. 2020): 1 − max_c p_c (keep the highest)."""
    probe = _probe(inputs, "least_confidence")
    score = np.empty(len(inputs.index))
    for rows in _blocks(len(score), PROBE_BLOCK):
        score[rows] = 1.0 - np.exp(_log_probs(probe.logits[rows]).max(axis=1))
    return frame(inputs, score)


@register("entropy", natural="high", needs=("probe",))
def entropy(inputs: ScoreInputs, *, seed: int) -> pd.DataFrame:
    """Predictive entropy (Settles 2009; Coleman et al. 2020): −Σ_c p_c log p_c (keep highest)."""
    probe = _probe(inputs, "entropy")
    score = np.empty(len(inputs.index))
    for rows in _blocks(len(score), PROBE_BLOCK):
        log_p = _log_probs(probe.logits[rows])
        score[rows] = -(np.exp(log_p) * log_p).sum(axis=1)
    return frame(inputs, score)


@register("margin", natural="low", needs=("probe",))
def margin(inputs: ScoreInputs, *, seed: int) -> pd.DataFrame:
    """Margin sampling (Scheffer et al. 2001): p_top1 − p_top2; the smallest is most uncertain."""
    probe = _probe(inputs, "margin")
    if probe.logits.shape[1] < 2:
        raise InputError("score method 'margin' needs at least 2 classes")
    score = np.empty(len(inputs.index))
    for rows in _blocks(len(score), PROBE_BLOCK):
        top2 = np.partition(np.exp(_log_probs(probe.logits[rows])), -2, axis=1)[:, -2:]
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


# ------------------------------------------------------------------------------------------ CAL
def nearest_neighbours(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (n×k) of each row's k nearest other rows (Euclidean), by blocked distances."""
    n, device = features.shape[0], features.device
    features = features - features.mean(dim=0, keepdim=True)  # smaller norms: less cancellation
    sq = (features * features).sum(dim=1)
    out = torch.empty((n, k), dtype=torch.int64, device=device)
    for rows in _blocks(n, KNN_BLOCK_ROWS):
        query = features[rows]
        own = torch.arange(rows.start, rows.stop, device=device)
        best_d = torch.full((len(own), k), float("inf"), dtype=features.dtype, device=device)
        best_i = torch.full((len(own), k), -1, dtype=torch.int64, device=device)
        for cols in _blocks(n, KNN_BLOCK_COLS):
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
    log_p = _log_probs(logits)
    p = np.exp(log_p)
    neg_entropy = (p * log_p).sum(axis=1)  # Σ_c p log p of every row
    score = np.empty(n)
    for rows in _blocks(n, KNN_BLOCK_ROWS):
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
    k = _int_param("cal", "k", k, 1)
    if not isinstance(per_class, (bool, np.bool_)):
        raise InputError(f"score method 'cal': per_class must be true or false, got {per_class!r}")
    probe = _probe(inputs, "cal")
    features = probe.features.reshape(len(inputs.index), -1).astype(np.float32)
    groups = per_class_rows(inputs.labels) if per_class else {-1: np.arange(len(inputs.index))}
    score = np.zeros(len(inputs.index))
    used = np.zeros(len(inputs.index), dtype=np.int64)
    for rows in groups.values():
        score[rows], used[rows] = _cal_scores(features[rows], probe.logits[rows], k, inputs.device)
    return frame(inputs, score, n_neighbours=used)


# ------------------------------------------------------------------------------------- DeepFool
def _input_grad(output: torch.Tensor, x: torch.Tensor, retain: bool) -> torch.Tensor:
    """Gradient of a scalar with respect to the input batch, flattened per sample."""
    return torch.autograd.grad(output, x, retain_graph=retain)[0].flatten(1)


def _deepfool_batch(
    model: nn.Module,
    x0: torch.Tensor,
    max_iter: int,
    overshoot: float,
    top_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeepFool on a batch: (‖(1+overshoot)·r‖, flipped, iterations) per sample.

    Per iteration: one forward of the samples still unflipped, one backward per candidate class
    (the prediction and the top_classes − 1 next-highest classes; None = every class). Samples
    that flipped (or whose candidate gradients vanish) are frozen. The caller puts the model in
    eval mode with frozen parameters (see `deepfool`).
    """
    if top_classes is not None and top_classes < 2:
        raise InputError(f"DeepFool top_classes must be ≥ 2 or None, got {top_classes!r}")
    n = x0.shape[0]
    x0 = x0.detach()
    flat0 = x0.flatten(1)
    r_tot = torch.zeros_like(flat0)
    flipped = torch.zeros(n, dtype=torch.bool, device=x0.device)
    iterations = torch.zeros(n, dtype=torch.int64, device=x0.device)
    x = x0.clone().requires_grad_(True)
    logits = model(x)
    n_classes = logits.shape[1]
    n_cand = n_classes if top_classes is None else min(top_classes, n_classes)
    with torch.no_grad():
        pred = logits.argmax(dim=1)
        others = logits.scatter(1, pred[:, None], float("-inf"))
        cand = torch.cat([pred[:, None], others.topk(n_cand - 1, dim=1).indices], dim=1)
    active = torch.arange(n, device=x0.device)  # samples still attacked
    rows = torch.arange(n, device=x0.device)  # their rows in the latest forward (x, logits)
    for iteration in range(1, max_iter + 1):
        chosen = logits[rows].gather(1, cand[active])  # A×K: the candidate logits
        # A×K×D, one backward per candidate class (eval mode: row i is sample i's own gradient)
        grads = torch.stack(
            [_input_grad(chosen[:, j].sum(), x, j < n_cand - 1)[rows] for j in range(n_cand)], 1
        )
        with torch.no_grad():
            w = grads[:, 1:] - grads[:, :1]
            f = (chosen[:, 1:] - chosen[:, :1]).detach()
            w_norm = w.norm(dim=2)
            pert = torch.where(w_norm > 0, f.abs() / w_norm, torch.full_like(f, float("inf")))
            best = pert.argmin(dim=1)
            step = pert.gather(1, best[:, None]).squeeze(1)
            movable = torch.isfinite(step)
            w_best = w[torch.arange(len(best), device=w.device), best]
            w_best_norm = w_norm.gather(1, best[:, None]).squeeze(1)
            # r_i = (|f'|/‖w'‖ + ε)·w'/‖w'‖ (the reference code); zero where no gradient exists
            scale = torch.where(movable, (step + DEEPFOOL_EPS) / w_best_norm, 0.0)
            r_tot[active] += scale[:, None] * w_best
            iterations[active] = iteration
        x = (flat0[active] + (1 + overshoot) * r_tot[active]).view(-1, *x0.shape[1:])
        x = x.detach().requires_grad_(True)
        logits = model(x)
        with torch.no_grad():
            done = logits.argmax(dim=1) != pred[active]
            flipped[active[done]] = True
            keep = ~done & movable
            active, rows = active[keep], keep.nonzero().squeeze(1)
        if len(active) == 0:
            break
    return ((1 + overshoot) * r_tot).norm(dim=1), flipped, iterations


@register(
    "deepfool",
    natural="low",
    needs=("model",),
    max_iter=50,
    overshoot=0.02,
    batch_size=256,
    top_classes=None,
)
def deepfool(
    inputs: ScoreInputs,
    *,
    seed: int,
    max_iter: int,
    overshoot: float,
    batch_size: int,
    top_classes: int | None,
) -> pd.DataFrame:
    """DFAL (Ducoffe & Precioso 2018): L2 norm of the DeepFool perturbation; keep the smallest.

    DeepFool (Moosavi-Dezfooli et al. 2016) linearises the proxy around the current point, steps
    to the nearest linearised boundary between the predicted class and a candidate class, and
    repeats until the prediction changes; the score is ‖(1 + overshoot)·r_tot‖₂ in pixel space
    (no [0, 1] box, as in DeepFool). A sample that does not flip within max_iter has no
    adversarial example, so DFAL has no boundary distance for it: it scores +inf (farthest, kept
    last) and `perturbation_norm` keeps the size of the partial perturbation. Every class is a
    candidate (one backward per class and iteration) unless `top_classes` limits them to the
    highest-scoring classes, as the reference code does for ImageNet (10). Labels are not
    used: DFAL attacks the prediction.
    """
    max_iter = _int_param("deepfool", "max_iter", max_iter, 1)
    batch_size = _int_param("deepfool", "batch_size", batch_size, 1)
    if isinstance(overshoot, bool) or not isinstance(overshoot, (int, float)) or overshoot < 0:
        raise InputError(
            f"score method 'deepfool': overshoot must be a number ≥ 0, got {overshoot!r}"
        )
    model = _need(inputs, "model", "deepfool")
    train = _need(inputs, "train", "deepfool")
    loader = Loader(train, batch_size, inputs.device, indices=inputs.index)
    norms, flips, iters = [], [], []
    with eval_mode(model), frozen(model):
        for _index, x, _y in loader.epoch(shuffle=False):
            norm, flipped, iterations = _deepfool_batch(
                model, x, max_iter, overshoot, top_classes=top_classes
            )
            norms.append(norm.double().cpu().numpy())
            flips.append(flipped.cpu().numpy())
            iters.append(iterations.cpu().numpy())
    norm, flipped = np.concatenate(norms), np.concatenate(flips)
    return frame(
        inputs,
        np.where(flipped, norm, np.inf),
        flipped=flipped,
        iterations=np.concatenate(iters),
        perturbation_norm=norm,
    )
