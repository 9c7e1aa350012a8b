"""Each sample's own quantities in a batch: logit margin, loss, input gradient, dynamics rows."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustcore.runtime import eval_mode, frozen

# The columns of a proxy's dynamics/epochNNN.parquet (one row per training sample).
DYNAMICS_COLUMNS = [
    "index",
    "label",
    "loss",
    "correct",
    "margin",
    "input_grad_norm",
    "el2n",
    "grad_norm_last",
]


def logit_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """True-class logit minus the largest other logit (negative when misclassified)."""
    true_logit = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true_logit - others.max(dim=1).values


def dynamics_rows(
    index: torch.Tensor,
    logits: torch.Tensor,
    y: torch.Tensor,
    losses: torch.Tensor,
    input_grad: torch.Tensor,
    features: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """One batch of dynamics-file rows (DYNAMICS_COLUMNS) as tensors where they were computed.

    el2n = ‖softmax − onehot‖₂ (Paul et al.); grad_norm_last = the norm of the loss gradient
    with respect to the classifier head (W, b), ‖p − y‖·‖[h, 1]‖ for head input h. Nothing is
    read back to the host here (that would wait for the device every batch): `rows_to_numpy`
    moves a whole epoch's batches at once.
    """
    residual = logits.float().softmax(1) - F.one_hot(y, logits.shape[1]).float()
    el2n = residual.norm(dim=1)
    feature_norm = (features.flatten(1).float().pow(2).sum(1) + 1).sqrt()
    return {
        "index": index.to(torch.int64),
        "label": y.to(torch.int64),
        "loss": losses.float(),
        "correct": logits.argmax(1) == y,
        "margin": logit_margin(logits, y).float(),
        "input_grad_norm": input_grad.flatten(1).norm(dim=1).float(),
        "el2n": el2n,
        "grad_norm_last": el2n * feature_norm,
    }


def rows_to_numpy(parts: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """Concatenate batches of `dynamics_rows` and move each column to the host once."""
    return {c: torch.cat([p[c] for p in parts]).cpu().numpy() for c in DYNAMICS_COLUMNS}


def per_sample_stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each sample's own loss, logits and input gradient: eval mode, no weight gradients."""
    with eval_mode(model), frozen(model):
        x = x.detach().requires_grad_(True)
        logits = model(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        # In eval mode samples do not interact, so the gradient of the sum is each sample's own.
        (input_grad,) = torch.autograd.grad(losses.sum(), x)
    return {"logits": logits.detach(), "losses": losses.detach(), "input_grad": input_grad}
