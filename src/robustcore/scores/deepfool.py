"""DeepFool (DFAL, Ducoffe & Precioso 2018): the L2 norm of the DeepFool perturbation per sample.

What DeepCore (Guo et al. 2022) does differently, where it matters:

- DeepFool: DeepCore returns the squared norm of the accumulated perturbation without
  overshoot, and samples that never flip keep their partial perturbation (so they can rank as
  "close to the boundary"); ours returns ‖(1 + overshoot)·r‖ and +inf for non-flipping samples.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustcore.data import Loader
from robustcore.io import InputError
from robustcore.runtime import eval_mode, frozen
from robustcore.scores.base import ScoreInputs, frame, int_param, need, register

DEEPFOOL_EPS = 1e-4  # added to each DeepFool step (as the reference code) so it crosses
# Candidate classes per step: the prediction and the 9 next-highest logits, as the DeepFool
# reference code (github.com/LTS4/DeepFool, Python/deepfool.py, line 8:
# `def deepfool(image, net, num_classes=10, overshoot=0.02, max_iter=50)`; line 31 keeps the
# top `num_classes` of the clean logits). All classes would hold batch x classes x input-size
# gradients: about 154 GB per 256-image batch at ImageNet size (1,000 classes, 3x224x224).
TOP_CLASSES = 10


def _input_grad(output: torch.Tensor, x: torch.Tensor, retain: bool) -> torch.Tensor:
    """Gradient of a scalar with respect to the input batch, flattened per sample."""
    return torch.autograd.grad(output, x, retain_graph=retain)[0].flatten(1)


def _check_top_classes(value: object) -> int | None:
    """top_classes: an integer ≥ 2 or None (every class), else InputError naming the key."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
        raise InputError(
            f"score method 'deepfool': top_classes must be an integer ≥ 2 or None (every "
            f"class), got {value!r}"
        )
    return int(value)


def _deepfool_batch(
    model: nn.Module,
    x0: torch.Tensor,
    max_iter: int,
    overshoot: float,
    top_classes: int | None = TOP_CLASSES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeepFool on a batch: (‖(1+overshoot)·r‖, flipped, iterations) per sample.

    Per iteration: one forward of the samples still unflipped, one backward per candidate class
    (the prediction and the top_classes − 1 next-highest classes of the clean logits, fixed for
    the whole attack as in the reference code; None = every class). Samples that flipped (or
    whose candidate gradients vanish) are frozen. The caller puts the model in eval mode with
    frozen parameters (see `deepfool`).
    """
    top_classes = _check_top_classes(top_classes)
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
    top_classes=TOP_CLASSES,
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
    last) and `perturbation_norm` keeps the size of the partial perturbation. The candidate
    classes are the prediction and the `top_classes` − 1 next-highest clean logits (default 10,
    the reference code's `num_classes=10`: LTS4/DeepFool, Python/deepfool.py, line 8), one
    backward each per iteration; with at most 10 classes that is every class, and
    `top_classes=None` makes every class a candidate for any number of classes. Labels are
    not used: DFAL attacks the prediction.
    """
    max_iter = int_param("deepfool", "max_iter", max_iter, 1)
    top_classes = _check_top_classes(top_classes)
    batch_size = int_param("deepfool", "batch_size", batch_size, 1)
    if isinstance(overshoot, bool) or not isinstance(overshoot, (int, float)) or overshoot < 0:
        raise InputError(
            f"score method 'deepfool': overshoot must be a number ≥ 0, got {overshoot!r}"
        )
    model = need(inputs, "model", "deepfool")
    train = need(inputs, "train", "deepfool")
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
