"""PGD in pixel space ([0, 1]), shared by the training regimes and the evaluation: ℓ∞/ℓ2
projection, random starts, restarts; the model is attacked in eval mode."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robustcore.io import InputError
from robustcore.runtime import eval_mode, frozen

NORMS = ("linf", "l2")


def per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample, shaped to broadcast against the batch."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def perturbation_size(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample size of x_adv − x in the given norm (ℓ∞ or ℓ2)."""
    delta = (x_adv - x).flatten(1)
    return delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project perturbations onto the ε-ball of the given norm."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / per_sample_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return delta * scale


def _random_start(
    x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None
) -> torch.Tensor:
    """A uniform point in the ε-ball (ℓ∞: per coordinate; ℓ2: direction and radius)."""
    if norm == "linf":
        return (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps
    direction = torch.randn(x.shape, generator=generator, device=x.device)
    direction = direction / per_sample_norm(direction).clamp_min(1e-12)
    radius = torch.rand(x.shape[0], generator=generator, device=x.device) ** (1 / x[0].numel())
    return direction * radius.view(-1, *([1] * (x.dim() - 1))) * eps


def check_norm(norm: str) -> None:
    """Raise InputError for a norm we do not implement."""
    if norm not in NORMS:
        raise InputError(f"attack norm {norm!r} unknown; expected one of {list(NORMS)}")


def first_success(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    tries: int,
    attempt: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Repeat `attempt` on the samples still classified correctly; keep each one's first success.

    A sample counts as robust only if it survives every try; the returned point is its first
    misclassified attempt, or its last attempt if none succeeded.
    """
    best = attempt(x, y)
    if tries <= 1:
        return best
    with eval_mode(model), torch.no_grad():
        alive = model(best).argmax(1) == y
    for _ in range(tries - 1):
        rows = alive.nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        x_try = attempt(x[rows], y[rows])
        with eval_mode(model), torch.no_grad():
            survived = model(x_try).argmax(1) == y[rows]
        best[rows] = x_try
        alive[rows] = survived
    return best


def _pgd_once(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    norm: str,
    random_start: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One PGD run from one (random or clean) start."""
    delta = _random_start(x, eps, norm, generator) if random_start else torch.zeros_like(x)
    delta = (x + delta).clamp(0, 1) - x
    with eval_mode(model), frozen(model):
        for _ in range(steps):
            delta.requires_grad_(True)
            # Summed loss: each sample's step depends only on its own gradient.
            loss = F.cross_entropy(model(x + delta), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                if norm == "linf":
                    step = step_size * grad.sign()
                else:
                    step = step_size * grad / per_sample_norm(grad).clamp_min(1e-12)
                delta = _project(delta + step, eps, norm)
                delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    norm: str = "linf",
    random_start: bool = True,
    restarts: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy; returns x + δ clipped to [0, 1].

    With `restarts` > 1 the samples still classified correctly are attacked again from a new
    random start, and each keeps its first successful point: a sample is robust only if it
    survives every restart.
    """
    check_norm(norm)
    if eps < 0 or steps < 0 or step_size < 0:
        raise InputError(
            f"attack eps, steps, step_size must be ≥ 0, got {eps}, {steps}, {step_size}"
        )
    if int(restarts) != restarts or restarts < 1:
        raise InputError(f"attack restarts must be an integer ≥ 1, got {restarts}")
    x = x.detach()
    if eps == 0 or (steps == 0 and not random_start):
        return x.clone()
    return first_success(
        model,
        x,
        y,
        int(restarts) if random_start else 1,  # restarts from the clean point would repeat
        lambda xs, ys: _pgd_once(
            model, xs, ys, eps, steps, step_size, norm, random_start, generator
        ),
    )
