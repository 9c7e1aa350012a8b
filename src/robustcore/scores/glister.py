"""GLISTER-ONLINE as a greedy pick order (orders, ties, budget: robustcore.scores.greedy).

``glister`` (Killamsetty et al. 2021, GLISTER-ONLINE) on the classifier head ``theta = (W, b)``:
gain(e | S) = ``eta * <grad L_V(theta_S), grad L_e(theta)>`` with
``theta_S = theta - eta * sum_{j in S} grad L_j(theta)`` (the Taylor approximation of the validation
log-likelihood after one step on S). The validation gradient is recomputed after every pick at the
updated head, so the validation probabilities change (DeepCore passes its update hook under a
misspelt keyword, ``upadate_state``, so it is never called and its ranking is static; it also uses
the mean instead of the sum of the selected gradients). ``validation="train"``: the validation set
is the group's own training samples (DeepCore's and CORDS' behaviour without a validation split;
the only option here). ``eta`` default 0.1 (DeepCore's default ``args.lr``, the usual proxy SGD
learning rate). Column ``gain``. Logits are recomputed as ``[h, 1] [W, b]^T`` from the head, which
must agree with the probe's logits.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from robustcore.io import InputError
from robustcore.scores.base import ScoreInputs, register
from robustcore.scores.greedy import (
    Rows,
    augmented,
    best,
    choice,
    common,
    complete,
    labelled_probe,
    number,
    run,
    steps,
)


@register(
    "glister",
    natural="low",
    needs=("probe",),
    kind="order",
    per_class=True,
    budget=None,
    eta=0.1,
    validation="train",
)
def glister(
    inputs: ScoreInputs,
    *,
    seed: int,
    per_class: bool,
    budget: float | None,
    eta: float,
    validation: str,
) -> pd.DataFrame:
    """GLISTER-ONLINE: greedy validation-likelihood gain, the head updated after every pick."""
    seed, per_class, budget = common("glister", seed, per_class, budget)
    eta = number("glister", "eta", eta, minimum=0.0, strict=True)
    choice("glister", "validation", validation, ("train",))
    probe = labelled_probe("glister", inputs)
    head = np.concatenate(
        [probe.last_weight.astype(np.float64), probe.last_bias.astype(np.float64)[:, None]], axis=1
    )
    if head.shape[1] != probe.features.shape[1] + 1:
        raise InputError("score method 'glister': the head's width does not match the features")

    def solve(rows: np.ndarray, label: int | None):
        h = augmented(probe, rows)
        n = len(rows)
        z = h @ head.T  # validation logits at theta_S (validation = the group's own samples)
        given = probe.logits[rows].astype(np.float64)
        if not np.allclose(z, given, rtol=1e-3, atol=1e-3 * (1.0 + float(np.abs(given).max()))):
            raise InputError(
                "score method 'glister': probe logits differ from [features, 1] @ [W, b]^T; "
                "the probe's head does not produce its logits"
            )
        onehot = np.zeros_like(z)
        onehot[np.arange(n), inputs.labels[rows]] = 1.0
        r = _softmax(z) - onehot  # training gradients at theta: r_e (x) h_e
        gram = Rows(lambda idx: h[idx] @ h.T, n)
        picked = np.zeros(n, dtype=bool)
        gain = np.full(n, np.nan)
        order: list[int] = []

        def gains() -> np.ndarray:
            val_grad = (_softmax(z) - onehot).T @ h / n  # C x (d + 1), at theta_S
            return eta * np.einsum("ic,ic->i", r, h @ val_grad.T)

        for _ in range(steps(n, budget)):
            current = gains()
            j = best(current, ~picked)
            gain[j] = current[j]
            z -= eta * np.outer(gram.row(j), r[j])  # theta_S <- theta_S - eta * g_j
            picked[j] = True
            order.append(j)
        return complete(order, gains(), picked), {"gain": gain}

    return run(inputs, per_class, solve)


def _softmax(z: np.ndarray) -> np.ndarray:
    """Row softmax, float64."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


__all__ = ["glister"]
