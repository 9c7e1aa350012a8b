"""Adversarial attacks in pixel space ([0, 1]); the model is attacked in eval mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustcore.io import InputError
from robustcore.runtime import eval_mode, frozen

NORMS = ("linf", "l2")


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample, shaped to broadcast against the batch."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project perturbations onto the ε-ball of the given norm."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / _per_sample_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return delta * scale


def _random_start(
    x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None
) -> torch.Tensor:
    """A uniform point in the ε-ball (ℓ∞: per coordinate; ℓ2: direction and radius)."""
    if norm == "linf":
        return (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps
    direction = torch.randn(x.shape, generator=generator, device=x.device)
    direction = direction / _per_sample_norm(direction).clamp_min(1e-12)
    radius = torch.rand(x.shape[0], generator=generator, device=x.device) ** (1 / x[0].numel())
    return direction * radius.view(-1, *([1] * (x.dim() - 1))) * eps


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
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy; returns x + δ clipped to [0, 1]."""
    if norm not in NORMS:
        raise InputError(f"attack norm {norm!r} unknown; expected one of {list(NORMS)}")
    if eps < 0 or steps < 0 or step_size < 0:
        raise InputError(
            f"attack eps, steps, step_size must be ≥ 0, got {eps}, {steps}, {step_size}"
        )
    x = x.detach()
    if eps == 0 or (steps == 0 and not random_start):
        return x.clone()
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
                    step = step_size * grad / _per_sample_norm(grad).clamp_min(1e-12)
                delta = _project(delta + step, eps, norm)
                delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float) -> torch.Tensor:
    """Fast gradient sign method: one ℓ∞ step of size ε from the clean point."""
    return pgd(model, x, y, eps=eps, steps=1, step_size=eps, norm="linf", random_start=False)
