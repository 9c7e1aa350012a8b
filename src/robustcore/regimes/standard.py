"""Standard training: cross-entropy on the clean batch."""

from __future__ import annotations

import torch
from torch import nn

from robustcore.regimes.base import (
    StepContext,
    StepResult,
    cross_entropy,
    register_regime,
    weighted_mean,
)


@register_regime("standard", compilable=True, clean_input_grads=True)
def standard_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
) -> StepResult:
    """Cross-entropy on the clean batch."""
    logits = model(x)
    losses = cross_entropy(logits, y)
    ctx.cost.add("update", len(y))
    return StepResult(weighted_mean(losses, ctx.sample_weight), logits.detach(), losses.detach())
