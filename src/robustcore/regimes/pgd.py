"""PGD adversarial training (Madry et al. 2018)."""

from __future__ import annotations

import torch
from torch import nn

from robustcore.regimes.base import (
    StepContext,
    StepResult,
    cross_entropy,
    own_params,
    register_regime,
    weighted_mean,
)
from robustcore.regimes.crafting import pgd_attack


@register_regime(
    "pgd",
    eps=8 / 255,
    steps=10,
    step_size=2 / 255,
    norm="linf",
    random_start=True,
    attack_mode="eval",
    compilable=True,
)
def pgd_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepResult:
    """PGD adversarial training (Madry et al. 2018): weighted CE on the PGD-attacked batch.

    Reference settings: CIFAR-10 ε = 8/255, step 2/255, 10 steps, random start (MadryLab
    cifar10_challenge config.json; the paper's text says 7 steps); MNIST ε = 0.3, step 0.01,
    40 steps, random start (mnist_challenge). ``norm="l2"`` takes normalized-gradient steps and
    projects to the ℓ2 ball (set eps/step_size accordingly). Logged logits and losses are the
    adversarial ones (train accuracy is then robust train accuracy).
    """
    p = own_params("pgd", ctx)
    x_adv = pgd_attack(model, x, y, ctx, p)
    logits = model(x_adv)
    ctx.cost.add("update", len(y))
    losses = cross_entropy(logits, y)
    return StepResult(weighted_mean(losses, ctx.sample_weight), logits.detach(), losses.detach())
